//! The route planner, pure: what the VPC route tables should hold for the leases this writer
//! is responsible for, against what they hold, gives per-table actions. No I/O, no clock.
//!
//! Rules (why in brackets):
//! - A route is ours only if its description is `flannel:<cluster>:<node IP>` and its
//!   destination lies inside the Network; nothing else is ever changed or deleted.
//! - Never a second route to a destination that already has one [two NORMAL_CVM routes to one
//!   destination are ECMP: a stale or foreign next hop would silently take half the traffic].
//!   A foreign route in the way is a conflict, reported, and the lease stays unrouted there.
//! - Our route with a wrong next hop is replaced in place [no blackhole window]; a disabled
//!   one is enabled; duplicates of ours are deleted.
//! - With AdoptUntaggedRoutes, an untagged NORMAL_CVM route to exactly a lease's subnet via
//!   that lease's node (upstream flannel's) is taken over by tagging it (a replace).
//! - Deletions: our own stale routes (per-node: described with this node's IP, destination no
//!   longer leased by anyone) and the orphans the garbage collector approved.
//! - Deletes run before creates, so they free quota; creates beyond a table's limit are
//!   reported as blocked, never sent.

use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

pub const NORMAL_CVM: &str = "NORMAL_CVM";
const TAG_PREFIX: &str = "flannel:";

/// A route as read back from a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActualRoute {
    pub route_id: u64,
    /// None when the API gave something that is not an IPv4 CIDR (an IPv6 route).
    pub dest: Option<Ipv4Net>,
    pub gateway_type: String,
    pub gateway_id: String,
    pub description: String,
    pub enabled: bool,
}

/// A route table as read back, with its route limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableState {
    pub id: String,
    pub routes: Vec<ActualRoute>,
    /// Routes this table may hold (DescribeVpcLimits, lowered after a LimitExceeded).
    pub limit: usize,
}

/// One lease's route: its subnet via its node's private IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Wanted {
    pub dest: Ipv4Net,
    pub next_hop: Ipv4Addr,
}

/// Which routes are ours: the cluster tag and the Network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    pub cluster: String,
    pub network: Ipv4Net,
}

impl Ownership {
    /// The description of our route to `node`: `flannel:<cluster>:<node IP>`.
    pub fn description(&self, node: Ipv4Addr) -> String {
        format!("{TAG_PREFIX}{}:{node}", self.cluster)
    }

    /// The node named by our tag, if `r` is ours.
    pub fn owner(&self, r: &ActualRoute) -> Option<Ipv4Addr> {
        if !self.covers(r.dest?) {
            return None;
        }
        self.tagged(r)
    }

    pub fn owns(&self, r: &ActualRoute) -> bool {
        self.owner(r).is_some()
    }

    /// Whether `dest` is the Network or inside it: the only destinations we ever write.
    pub fn covers(&self, dest: Ipv4Net) -> bool {
        self.network.contains(&dest.network()) && dest.prefix_len() >= self.network.prefix_len()
    }

    /// The node named by our cluster's tag on a route outside the Network: one an earlier
    /// version wrote for a lease it should have refused. Never ours by default; collected
    /// only when the garbage collector (or an operator) says so.
    pub fn stray(&self, r: &ActualRoute) -> Option<Ipv4Addr> {
        let dest = r.dest?;
        if self.covers(dest) {
            return None;
        }
        self.tagged(r)
    }

    /// The node named by our cluster's tag, wherever the route goes.
    fn tagged(&self, r: &ActualRoute) -> Option<Ipv4Addr> {
        let rest = r.description.strip_prefix(TAG_PREFIX)?;
        let (cluster, node) = rest.split_once(':')?;
        (cluster == self.cluster).then(|| node.parse().ok())?
    }
}

/// Which of our routes this writer manages besides the ones it wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A node agent: it may remove its own stale routes (described with this IP).
    Node(Ipv4Addr),
    /// The controller: every route of ours is its business (deletion still needs the GC).
    Cluster,
}

/// Everything the planner looks at.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    pub tables: &'a [TableState],
    /// The routes this writer must make present (per-node: its own lease; controller: all).
    pub wanted: &'a [Wanted],
    /// Every leased subnet in the cluster (a route to one of them is never stale).
    pub leased: &'a BTreeSet<Ipv4Net>,
    pub owner: &'a Ownership,
    pub adopt_untagged: bool,
    pub scope: Scope,
    /// Orphans the garbage collector approved for deletion: (table, RouteId).
    pub collect: &'a BTreeSet<(String, u64)>,
}

/// A route to write, with the description that marks it ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteWrite {
    pub dest: Ipv4Net,
    pub next_hop: Ipv4Addr,
    pub description: String,
}

/// The actions for one table, applied in this order: replace, enable, delete, create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TablePlan {
    pub table: String,
    pub replace: Vec<(u64, RouteWrite)>,
    pub enable: Vec<u64>,
    pub delete: Vec<u64>,
    pub create: Vec<RouteWrite>,
}

impl TablePlan {
    pub fn is_empty(&self) -> bool {
        self.replace.is_empty()
            && self.enable.is_empty()
            && self.delete.is_empty()
            && self.create.is_empty()
    }
}

/// A route in the way of a lease's route: left alone, reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub table: String,
    pub wanted: Wanted,
    pub route_id: u64,
    pub gateway_type: String,
    pub gateway_id: String,
    pub description: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "route {} via {} in {}: route {} ({} {}{}) already goes there and is not ours; not creating a second one (it would split traffic as ECMP)",
            self.wanted.dest,
            self.wanted.next_hop,
            self.table,
            self.route_id,
            self.gateway_type,
            self.gateway_id,
            if self.description.is_empty() {
                String::new()
            } else {
                format!(", {:?}", self.description)
            }
        )
    }
}

/// A route that does not fit in its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub table: String,
    pub wanted: Wanted,
    pub usage: usize,
    pub limit: usize,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "create route {} via {} in {}: route table full ({}/{} routes)",
            self.wanted.dest, self.wanted.next_hop, self.table, self.usage, self.limit
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Tables with something to do.
    pub tables: Vec<TablePlan>,
    pub conflicts: Vec<Conflict>,
    pub blocked: Vec<Blocked>,
    /// (table, destination) of wanted routes already right before any action.
    pub satisfied: BTreeSet<(String, Ipv4Net)>,
    /// Wanted routes whose destination is not inside the Network: never written, whatever
    /// the caller passed.
    pub outside: Vec<Wanted>,
}

impl Plan {
    pub fn writes(&self) -> usize {
        self.tables
            .iter()
            .map(|t| t.replace.len() + t.enable.len() + t.delete.len() + t.create.len())
            .sum()
    }
}

/// Plan every table.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut out = Plan::default();
    // Only destinations inside the Network, whatever the caller passed (defence in depth:
    // admission refuses such leases before they get here). One wanted route per
    // destination (the lease store guarantees it; be safe anyway).
    let (inside, outside): (Vec<Wanted>, Vec<Wanted>) = input
        .wanted
        .iter()
        .partition(|w| input.owner.covers(w.dest));
    out.outside = outside;
    let wanted: BTreeMap<Ipv4Net, Ipv4Addr> = inside.iter().map(|w| (w.dest, w.next_hop)).collect();
    for table in input.tables {
        let tp = plan_table(input, table, &wanted, &mut out);
        if !tp.is_empty() {
            out.tables.push(tp);
        }
    }
    out
}

fn plan_table(
    input: &PlanInput<'_>,
    table: &TableState,
    wanted: &BTreeMap<Ipv4Net, Ipv4Addr>,
    out: &mut Plan,
) -> TablePlan {
    let owner = input.owner;
    let mut tp = TablePlan {
        table: table.id.clone(),
        ..Default::default()
    };
    let mut by_dest: BTreeMap<Ipv4Net, Vec<&ActualRoute>> = BTreeMap::new();
    for r in &table.routes {
        if let Some(d) = r.dest {
            by_dest.entry(d).or_default().push(r);
        }
    }
    let mut creates = Vec::new();
    for (&dest, &next_hop) in wanted {
        let w = Wanted { dest, next_hop };
        let write = RouteWrite {
            dest,
            next_hop,
            description: owner.description(next_hop),
        };
        let here = by_dest.get(&dest).map(Vec::as_slice).unwrap_or_default();
        let (ours, foreign): (Vec<&ActualRoute>, Vec<&ActualRoute>) =
            here.iter().partition(|r| owner.owns(r));
        // Upstream's untagged route via the right node, taken over when allowed.
        let adoptable = |r: &&&ActualRoute| {
            input.adopt_untagged
                && r.description.is_empty()
                && r.gateway_type == NORMAL_CVM
                && r.gateway_id == next_hop.to_string()
        };
        let (adopt, foreign): (Vec<&ActualRoute>, Vec<&ActualRoute>) = if ours.is_empty() {
            foreign.iter().partition(adoptable)
        } else {
            (Vec::new(), foreign)
        };
        for r in &foreign {
            out.conflicts.push(Conflict {
                table: table.id.clone(),
                wanted: w,
                route_id: r.route_id,
                gateway_type: r.gateway_type.clone(),
                gateway_id: r.gateway_id.clone(),
                description: r.description.clone(),
            });
        }
        let candidates: Vec<&ActualRoute> = ours.into_iter().chain(adopt).collect();
        // Keep the best of ours: right next hop first, then enabled.
        let keeper = candidates.iter().copied().max_by_key(|r| {
            (
                r.gateway_type == NORMAL_CVM && r.gateway_id == next_hop.to_string(),
                r.enabled,
                std::cmp::Reverse(r.route_id),
            )
        });
        match keeper {
            None if foreign.is_empty() => creates.push((w, write)),
            None => {}
            Some(k) => {
                let right = k.gateway_type == NORMAL_CVM
                    && k.gateway_id == next_hop.to_string()
                    && k.description == write.description;
                if !right {
                    tp.replace.push((k.route_id, write));
                } else if !k.enabled {
                    tp.enable.push(k.route_id);
                } else if foreign.is_empty() {
                    out.satisfied.insert((table.id.clone(), dest));
                }
                if !right && !k.enabled {
                    tp.enable.push(k.route_id);
                }
                // Duplicates of ours go; an untagged route is never deleted.
                for extra in candidates
                    .iter()
                    .filter(|r| r.route_id != k.route_id && owner.owns(r))
                {
                    tp.delete.push(extra.route_id);
                }
            }
        }
    }
    // Our routes to destinations this writer does not want.
    for r in &table.routes {
        let Some(node) = owner.owner(r) else { continue };
        let dest = r.dest.expect("owned routes have a destination");
        if wanted.contains_key(&dest) {
            continue;
        }
        let stale_own =
            matches!(input.scope, Scope::Node(me) if me == node) && !input.leased.contains(&dest);
        let collected = input.collect.contains(&(table.id.clone(), r.route_id));
        if (stale_own || collected) && !tp.delete.contains(&r.route_id) {
            tp.delete.push(r.route_id);
        }
    }
    // Strays of ours outside the Network: only what the collector approved.
    for r in &table.routes {
        if owner.stray(r).is_some() && input.collect.contains(&(table.id.clone(), r.route_id)) {
            tp.delete.push(r.route_id);
        }
    }
    // Quota: deletes free room first; what does not fit is blocked, not sent.
    let usage = table.routes.len();
    let room = (table.limit + tp.delete.len()).saturating_sub(usage);
    for (i, (w, write)) in creates.into_iter().enumerate() {
        if i < room {
            tp.create.push(write);
        } else {
            out.blocked.push(Blocked {
                table: table.id.clone(),
                wanted: w,
                usage,
                limit: table.limit,
            });
        }
    }
    tp
}

#[cfg(test)]
pub(crate) mod tests {
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
}
