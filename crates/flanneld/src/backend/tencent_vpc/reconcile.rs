//! One reconcile: read the VPC's tables (one DescribeRouteTables), pick the tables to program,
//! collect garbage when elected, plan, apply, and report. Shared by the node agent (its own
//! lease), the controller (every lease) and flannelctl (a preview). Every decision is the
//! pure planner's (`plan`, `split`, `gc`); this is the shell around it: the cloud behind
//! [`VpcRoutes`], the quota state, logs and metrics.

use super::apply::{self, Applied};
use super::cloud::VpcRoutes;
use super::gc::{LeaseView, OrphanTracker};
use super::plan::{self, Ownership, PlanInput, Scope, Wanted};
use super::tables;
use super::Settings;
use super::TencentVpcError;
use crate::metrics::{TableLabels, TableRouteLabels, VpcMetrics};
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tencent_cloud::vpc::RouteTable;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

/// Routes per table when DescribeVpcLimits cannot be read (Tencent's default quota).
pub const DEFAULT_ROUTE_LIMIT: usize = 50;

/// What a reconcile is about.
pub struct Target<'a> {
    /// Routes this writer makes present.
    pub wanted: &'a [Wanted],
    /// Every leased subnet (never stale).
    pub leased: &'a BTreeSet<Ipv4Net>,
    /// The subnets of the nodes (lease BackendData), whose tables need every route.
    pub node_subnets: &'a BTreeSet<String>,
    pub scope: Scope,
    /// Collect garbage with this view of the leases (only the elected collector passes one).
    pub gc: Option<LeaseView<'a>>,
    /// With Fallback: after the read, keep only the wanted routes the split routes.
    pub split: Option<SplitRequest<'a>>,
}

/// The inputs of the Fallback split (see `split`).
#[derive(Debug, Clone, Copy)]
pub struct SplitRequest<'a> {
    /// Every lease's route.
    pub leases: &'a [Wanted],
    pub reserved: usize,
    /// The wanted routes the split moved to vxlan that may go now; the others are kept
    /// until they are listed here, so that peers add their vxlan entries before the route
    /// goes.
    pub evict: &'a BTreeSet<Ipv4Net>,
}

/// What a reconcile found and did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The tables programmed.
    pub tables: Vec<String>,
    /// (table, destination) of wanted routes now in place.
    pub present: BTreeSet<(String, Ipv4Net)>,
    /// Read the tables again soon (something changed behind our back).
    pub refresh: bool,
    /// Errors of the apply step (the read and plan succeeded): worth a sooner retry.
    pub errors: Vec<TencentVpcError>,
    /// Why a wanted route is missing, by destination: a conflict, a full table, a route the
    /// API refused, a destination outside the Network. Nothing a sooner retry changes.
    pub unrouted: BTreeMap<Ipv4Net, String>,
    /// With Fallback: the split, and the programmed tables as read.
    pub split: Option<super::split::Split>,
    pub observed: Vec<plan::TableState>,
}

impl Outcome {
    /// `dest` is in place in every programmed table.
    pub fn routed(&self, dest: Ipv4Net) -> bool {
        !self.tables.is_empty()
            && self
                .tables
                .iter()
                .all(|t| self.present.contains(&(t.clone(), dest)))
    }
}

/// The VPC's tables as read once.
#[derive(Debug, Clone)]
pub struct Reading {
    /// Every table of the VPC.
    pub all: Vec<plan::TableState>,
    /// The ids of the tables to program.
    pub selected: Vec<String>,
    /// The account's routes-per-table limit.
    pub account: usize,
}

impl Reading {
    pub fn selected_states(&self) -> Vec<plan::TableState> {
        self.all
            .iter()
            .filter(|t| self.selected.contains(&t.id))
            .cloned()
            .collect()
    }
}

pub struct Reconciler {
    client: Arc<dyn VpcRoutes>,
    settings: Settings,
    metrics: VpcMetrics,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The account's routes-per-table limit, read once.
    limit: Option<usize>,
    /// Lower limits learnt from LimitExceeded, per table.
    lowered: BTreeMap<String, usize>,
    tracker: OrphanTracker,
    unserved_reported: BTreeSet<String>,
    /// With Fallback: the last split put leases on the vxlan side.
    over_vxlan: bool,
    /// The last plan had creates blocked by a full table: read the limit again, and forget
    /// limits learnt from LimitExceeded, so that a raised quota is seen at the next resync.
    blocked: bool,
    /// A reading taken by [`Reconciler::prime`], for the next read if still young.
    primed: Option<(std::time::Instant, Vec<RouteTable>)>,
}

/// How long a primed reading stands in for a read (the lease is taken in between).
const PRIMED_FOR: std::time::Duration = std::time::Duration::from_secs(30);

impl Reconciler {
    pub fn new(client: Arc<dyn VpcRoutes>, settings: Settings, metrics: VpcMetrics) -> Reconciler {
        let tracker = OrphanTracker::with_min_age(settings.orphan_min_age);
        Reconciler {
            client,
            settings,
            metrics,
            state: Mutex::new(State {
                tracker,
                ..State::default()
            }),
        }
    }

    pub fn owner(&self) -> &Ownership {
        &self.settings.owner
    }

    /// The routes-per-table limit: read once, and again at every read while creates are
    /// blocked by a full table or (Fallback) leases are on the vxlan side: a raised quota
    /// unblocks them within a resync. Lowered limits are forgotten then too (a create that
    /// still does not fit answers LimitExceeded again, one call per resync). While
    /// everything fits there is nothing to re-read it for: a lowered limit shows as
    /// `LimitExceeded` at the next create.
    async fn account_limit(&self, state: &mut State) -> usize {
        let reread = state.blocked || (self.settings.fallback && state.over_vxlan);
        if let (Some(l), false) = (state.limit, reread) {
            return l;
        }
        if state.blocked {
            state.lowered.clear();
        }
        match self.client.route_limit().await {
            Ok(limit) => {
                let l = limit.unwrap_or(DEFAULT_ROUTE_LIMIT);
                if state.limit != Some(l) {
                    info!(limit = l, "routes per route table (DescribeVpcLimits)");
                    if state.limit.is_some_and(|old| l > old) {
                        state.lowered.clear();
                    }
                }
                state.limit = Some(l);
                l
            }
            Err(e) => {
                // Not worth failing for: LimitExceeded answers teach us the real limit.
                let l = state.limit.unwrap_or(DEFAULT_ROUTE_LIMIT);
                warn!(error = %crate::Report(&e), assumed = l, "reading the route quota failed");
                l
            }
        }
    }

    /// One DescribeRouteTables of the VPC: every table as the planner sees it, and the ones
    /// to program for `node_subnets`.
    pub async fn read(&self, node_subnets: &BTreeSet<String>) -> Result<Reading, TencentVpcError> {
        let mut state = self.state.lock().await;
        self.read_locked(&mut state, node_subnets).await
    }

    /// One DescribeRouteTables of the VPC.
    async fn describe(&self) -> Result<Vec<RouteTable>, TencentVpcError> {
        self.client
            .route_tables(&self.settings.vpc_id)
            .await
            .map_err(|e| TencentVpcError::Cloud {
                op: format!("read the route tables of {}", self.settings.vpc_id),
                source: Box::new(e),
            })
    }

    /// Read the tables before anything else happens (an agent, before it takes its lease):
    /// an unknown VpcId or RouteTableIds entry is an error now, not after the lease is held.
    /// The reading is kept for the first reconcile, so a join costs no extra call.
    pub async fn prime(&self, node_subnets: &BTreeSet<String>) -> Result<(), TencentVpcError> {
        let mut state = self.state.lock().await;
        let described = self.describe().await?;
        tables::select(
            &self.settings.vpc_id,
            &described,
            &self.settings.route_table_ids,
            node_subnets,
        )
        .map_err(TencentVpcError::Discovery)?;
        state.primed = Some((std::time::Instant::now(), described));
        Ok(())
    }

    async fn read_locked(
        &self,
        state: &mut State,
        node_subnets: &BTreeSet<String>,
    ) -> Result<Reading, TencentVpcError> {
        let described = match state.primed.take() {
            Some((at, d)) if at.elapsed() < PRIMED_FOR => d,
            _ => self.describe().await?,
        };
        let selection = tables::select(
            &self.settings.vpc_id,
            &described,
            &self.settings.route_table_ids,
            node_subnets,
        )
        .map_err(TencentVpcError::Discovery)?;
        for s in &selection.unserved {
            if state.unserved_reported.insert(s.clone()) {
                warn!(subnet = %s, tables = ?self.settings.route_table_ids, "node subnet {s} is not served by any of Backend.RouteTableIds: its nodes cannot reach pods through them");
            }
        }
        let account = self.account_limit(state).await;
        let all: Vec<plan::TableState> = described
            .iter()
            .map(|t| {
                let limit = state.lowered.get(t.id()).copied().unwrap_or(account);
                tables::table_state(t, limit)
            })
            .collect();
        Ok(Reading {
            all,
            selected: selection.tables,
            account,
        })
    }

    /// Plan without applying (`flannelctl routes plan`); with a split request, the split
    /// too (the wanted routes it moves to vxlan left out of the plan).
    pub async fn preview(
        &self,
        target: &Target<'_>,
    ) -> Result<(Reading, plan::Plan, Option<super::split::Split>), TencentVpcError> {
        let reading = self.read(target.node_subnets).await?;
        let states = reading.selected_states();
        let split = target
            .split
            .map(|r| super::split::split(r.leases, &states, &self.settings.owner, r.reserved));
        let wanted: Vec<Wanted> = match &split {
            Some(s) => target
                .wanted
                .iter()
                .filter(|w| s.routed.contains(&w.dest))
                .copied()
                .collect(),
            None => target.wanted.to_vec(),
        };
        let p = plan::plan(&PlanInput {
            tables: &states,
            wanted: &wanted,
            leased: target.leased,
            owner: &self.settings.owner,
            adopt_untagged: self.settings.adopt_untagged,
            scope: target.scope,
            collect: &BTreeSet::new(),
        });
        Ok((reading, p, split))
    }

    pub fn vpc_id(&self) -> &str {
        &self.settings.vpc_id
    }

    /// Read, plan and apply once. A failed read is an error; failed writes are in the outcome.
    pub async fn reconcile(&self, target: &Target<'_>) -> Result<Outcome, TencentVpcError> {
        let started = std::time::Instant::now();
        let mut state = self.state.lock().await;
        let reading = self.read_locked(&mut state, target.node_subnets).await?;
        let states = reading.selected_states();
        let collect = match target.gc {
            Some(view) => {
                // Every table of the VPC: our routes may outlive the nodes of a subnet.
                let verdict = state
                    .tracker
                    .observe(view, &reading.all, &self.settings.owner);
                if let Some(h) = &verdict.hold {
                    warn!(reason = %h, "route garbage collection paused");
                } else if !verdict.collect.is_empty() || verdict.waiting > 0 {
                    info!(
                        deleting = verdict.collect.len(),
                        waiting = verdict.waiting,
                        "route garbage collection"
                    );
                }
                verdict.collect
            }
            None => BTreeSet::new(),
        };
        let split = target
            .split
            .map(|r| super::split::split(r.leases, &states, &self.settings.owner, r.reserved));
        state.over_vxlan = split.as_ref().is_some_and(|s| !s.fallback.is_empty());
        let mut leased = target.leased.clone();
        let wanted: Vec<Wanted> = match (&split, target.split) {
            (Some(s), Some(r)) => {
                let (kept, dropped) =
                    plan::after_split(target.wanted, s, r.evict, &states, &self.settings.owner);
                // Not leased as far as the planner knows: our routes to them go.
                for d in &dropped {
                    leased.remove(d);
                }
                kept
            }
            _ => target.wanted.to_vec(),
        };
        let mut plan = plan::plan(&PlanInput {
            tables: &states,
            wanted: &wanted,
            leased: &leased,
            owner: &self.settings.owner,
            adopt_untagged: self.settings.adopt_untagged,
            scope: target.scope,
            collect: &collect,
        });
        // Orphans in tables no node subnet uses any more: deletions only.
        plan.tables.extend(plan::collect_elsewhere(
            &reading.all,
            &reading.selected,
            &collect,
            &self.settings.owner,
        ));
        for c in &plan.conflicts {
            warn!(table = %c.table, dest = %c.wanted.dest, route_id = c.route_id, "{c}");
        }
        for b in &plan.blocked {
            warn!(table = %b.table, dest = %b.wanted.dest, usage = b.usage, limit = b.limit, "{b}");
        }
        let usage: BTreeMap<String, usize> = states
            .iter()
            .map(|t| (t.id.clone(), t.routes.len()))
            .collect();
        let applied: Applied = if plan.tables.is_empty() {
            Applied::default()
        } else {
            apply::apply(self.client.as_ref(), &plan, &usage).await
        };
        for (table, used) in &applied.full {
            warn!(table = %table, limit = used, "the API says the table is full; using its usage as its limit");
            state.lowered.insert(table.clone(), *used);
        }
        let gc_deleted = collect.len();
        if gc_deleted > 0 && applied.errors.is_empty() {
            self.metrics.gc_deleted.inc_by(gc_deleted as u64);
        }
        let rejected: Vec<(String, Ipv4Net)> = applied
            .rejected
            .iter()
            .map(|(t, d, _)| (t.clone(), *d))
            .collect();
        let present =
            plan::present_after(&plan, &wanted, &applied.done, &rejected, applied.refresh);
        self.record(&states, &plan, &present, &applied, wanted.len());
        debug!(tables = ?reading.selected, writes = plan.writes(), elapsed = ?started.elapsed(), "reconciled");
        self.metrics
            .reconcile_seconds
            .observe(started.elapsed().as_secs_f64());
        state.blocked = !plan.blocked.is_empty();
        let mut unrouted = BTreeMap::new();
        for w in &plan.outside {
            warn!(dest = %w.dest, next_hop = %w.next_hop, network = %self.settings.owner.network, "not routing a destination outside the Network");
            unrouted.insert(
                w.dest,
                format!(
                    "route {} via {}: the destination is not inside the Network {}",
                    w.dest, w.next_hop, self.settings.owner.network
                ),
            );
        }
        for (table, dest, e) in &applied.rejected {
            warn!(table = %table, dest = %dest, error = %crate::report(e), "the API refused this route; retrying at the next resync");
            unrouted.insert(*dest, crate::report(e));
        }
        for b in &plan.blocked {
            unrouted.insert(b.wanted.dest, b.to_string());
        }
        for c in &plan.conflicts {
            unrouted.insert(c.wanted.dest, c.to_string());
        }
        let observed = if split.is_some() { states } else { Vec::new() };
        Ok(Outcome {
            tables: reading.selected,
            present,
            refresh: applied.refresh,
            errors: applied.errors,
            unrouted,
            split,
            observed,
        })
    }

    fn record(
        &self,
        states: &[plan::TableState],
        plan: &plan::Plan,
        present: &BTreeSet<(String, Ipv4Net)>,
        applied: &Applied,
        desired: usize,
    ) {
        for t in states {
            let label = |state| TableRouteLabels {
                table: t.id.clone(),
                state,
            };
            let count = |n: usize| n as i64;
            self.metrics
                .routes
                .get_or_create(&label("desired"))
                .set(count(desired));
            self.metrics
                .routes
                .get_or_create(&label("present"))
                .set(count(present.iter().filter(|(tb, _)| tb == &t.id).count()));
            self.metrics
                .routes
                .get_or_create(&label("conflicting"))
                .set(count(
                    plan.conflicts.iter().filter(|c| c.table == t.id).count(),
                ));
            self.metrics
                .routes
                .get_or_create(&label("blocked"))
                .set(count(
                    plan.blocked.iter().filter(|b| b.table == t.id).count(),
                ));
            self.metrics
                .routes
                .get_or_create(&label("rejected"))
                .set(count(
                    applied
                        .rejected
                        .iter()
                        .filter(|(tb, _, _)| tb == &t.id)
                        .count()
                        + plan.outside.len(),
                ));
            let table = TableLabels {
                table: t.id.clone(),
            };
            let written: i64 = plan
                .tables
                .iter()
                .filter(|tp| tp.table == t.id)
                .map(|tp| tp.create.len() as i64 - tp.delete.len() as i64)
                .sum();
            self.metrics
                .table_usage
                .get_or_create(&table)
                .set(t.routes.len() as i64 + written);
            self.metrics
                .table_limit
                .get_or_create(&table)
                .set(applied.full.get(&t.id).copied().unwrap_or(t.limit) as i64);
        }
    }
}
