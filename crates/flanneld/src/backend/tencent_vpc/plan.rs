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

/// With Fallback: the wanted routes the split keeps (the routed side, and those still
/// holding a route whose eviction is not due: peers first add their vxlan entries), and the
/// destinations it drops (for the planner no longer leased, so their routes go).
pub fn after_split(
    wanted: &[Wanted],
    split: &super::split::Split,
    evict: &BTreeSet<Ipv4Net>,
    tables: &[TableState],
    owner: &Ownership,
) -> (Vec<Wanted>, BTreeSet<Ipv4Net>) {
    let mut dropped = BTreeSet::new();
    let kept = wanted
        .iter()
        .filter(|w| {
            let keep = split.routed.contains(&w.dest)
                || (!evict.contains(&w.dest)
                    && tables.iter().any(|t| super::split::holds(t, owner, w)));
            if !keep {
                dropped.insert(w.dest);
            }
            keep
        })
        .copied()
        .collect();
    (kept, dropped)
}

/// Deletions the collector approved in the tables not programmed (no node subnet uses them
/// any more): our orphans and strays only.
pub fn collect_elsewhere(
    all: &[TableState],
    selected: &[String],
    collect: &BTreeSet<(String, u64)>,
    owner: &Ownership,
) -> Vec<TablePlan> {
    all.iter()
        .filter(|t| !selected.contains(&t.id))
        .filter_map(|t| {
            let delete: Vec<u64> = t
                .routes
                .iter()
                .filter(|r| {
                    (owner.owns(r) || owner.stray(r).is_some())
                        && collect.contains(&(t.id.clone(), r.route_id))
                })
                .map(|r| r.route_id)
                .collect();
            (!delete.is_empty()).then(|| TablePlan {
                table: t.id.clone(),
                delete,
                ..TablePlan::default()
            })
        })
        .collect()
}

/// What is in place after `plan` was applied: (table, destination) of wanted routes right
/// before, or written by a table plan that fully succeeded (`done`), except what was blocked,
/// in conflict, refused by the API (`rejected`) or outside the Network. After a `refresh`
/// (a duplicate or stale record) a changed table proves nothing until it is read again.
pub fn present_after(
    plan: &Plan,
    wanted: &[Wanted],
    done: &[String],
    rejected: &[(String, Ipv4Net)],
    refresh: bool,
) -> BTreeSet<(String, Ipv4Net)> {
    let mut present = plan.satisfied.clone();
    for tp in plan.tables.iter().filter(|tp| done.contains(&tp.table)) {
        let missing = |dest: &Ipv4Net| {
            plan.blocked
                .iter()
                .any(|b| b.table == tp.table && b.wanted.dest == *dest)
                || plan
                    .conflicts
                    .iter()
                    .any(|c| c.table == tp.table && c.wanted.dest == *dest)
                || rejected.iter().any(|(t, d)| *t == tp.table && d == dest)
                || plan.outside.iter().any(|w| w.dest == *dest)
        };
        for w in wanted.iter().filter(|w| !missing(&w.dest)) {
            present.insert((tp.table.clone(), w.dest));
        }
    }
    if refresh {
        present.retain(|(t, _)| !plan.tables.iter().any(|tp| &tp.table == t));
    }
    present
}

#[cfg(test)]
pub(crate) mod tests;
