//! `flannelctl routes plan|gc` and `config check --cloud`: the tencent-vpc backend's planner
//! and tables, driven by an operator. Reads never write; `gc` deletes only routes carrying
//! this cluster's tag.

use crate::backend::tencent_vpc::plan::{Ownership, Plan, Scope, TableState, Wanted};
use crate::backend::tencent_vpc::reconcile::{Reading, Reconciler, SplitRequest, Target};
use crate::backend::tencent_vpc::split::Split;
use crate::backend::tencent_vpc::TencentVpcError;
use crate::backend::tencent_vpc::{self as tvpc};
use crate::backend::BackendError;
use flannel_core::admission::{Allocation, LeaseGate, PeerView, Rules};
use flannel_core::backend_config::{BackendConfig, TencentVpcConfig};
use flannel_core::lease::Lease;
use flannel_core::ValidatedNetConfig;
use ipnet::Ipv4Net;
use std::collections::BTreeSet;
use std::fmt::Write;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error("Backend.Type is {0}: these commands are for tencent-vpc")]
    NotTencentVpc(String),
    #[error("tencent-vpc routes IPv4 pod subnets only")]
    NoIpv4,
    #[error("no VPC: set Backend.VpcId or --vpc-id (the metadata service did not say)")]
    NoVpc,
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    TencentVpc(#[from] TencentVpcError),
    #[error("the lease store holds no lease: refusing to treat every route of the cluster as an orphan (use --all-ours to remove them all)")]
    NoLeases,
}

/// A connected view of the cluster's routes.
pub struct Routes {
    client: Arc<tencent_cloud::Client>,
    reconciler: Reconciler,
    owner: Ownership,
    /// `Fallback: vxlan`: the entries per table kept free (ReservedRoutes).
    fallback_reserved: Option<usize>,
    /// The VPC's CIDRs (admission checks PrivateIPs against them).
    vpc_cidrs: Vec<Ipv4Net>,
}

/// A route of ours a collection would delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub table: String,
    pub route_id: u64,
    pub dest: Ipv4Net,
    pub via: String,
    /// Outside the Network (an earlier version's route for a lease it should have refused).
    pub stray: bool,
}

/// Which of our routes a collection takes.
#[derive(Debug, Clone, Copy)]
pub struct OrphanQuery<'a> {
    /// The leases (None: every route of ours, leased or not: an uninstall).
    pub leases: Option<&'a PeerView<'a>>,
    /// Also every stray of ours outside the Network, whatever its next hop (an operator's
    /// word); without it a stray goes only when its next hop holds a lease.
    pub outside_network: bool,
}

/// What the operator may override on the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub vpc_id: Option<String>,
    pub metadata_url: Option<String>,
}

impl Routes {
    /// Connect with the Backend section of `config`, flags first.
    pub async fn open(config: &ValidatedNetConfig, o: &Overrides) -> Result<Routes, RoutesError> {
        let BackendConfig::TencentVpc(mut cfg) =
            BackendConfig::parse(&config.backend_type, config.backend.as_ref())
                .map_err(BackendError::from)?
        else {
            return Err(RoutesError::NotTencentVpc(config.backend_type.clone()));
        };
        let network = config.ipv4.ok_or(RoutesError::NoIpv4)?.network;
        apply_overrides(&mut cfg, o);
        let env = |k: &str| std::env::var(k).ok();
        let metrics = crate::metrics::Metrics::default().vpc;
        let cloud = crate::cloud::connect(tvpc::cloud_setup(&cfg, &metrics), &env)
            .await
            .map_err(TencentVpcError::CloudSetup)?;
        let vpc_id = tvpc::resolve_vpc(&cfg, &cloud.metadata)
            .await
            .ok_or(RoutesError::NoVpc)?;
        let vpc_cidrs = tvpc::vpc_cidrs(&cloud.client, &vpc_id).await;
        let settings = tvpc::Settings::from_config(&cfg, network, vpc_id);
        let client = Arc::new(cloud.client);
        Ok(Routes {
            fallback_reserved: settings.fallback.then_some(settings.reserved),
            owner: settings.owner.clone(),
            vpc_cidrs,
            reconciler: Reconciler::new(client.clone(), settings, metrics),
            client,
        })
    }

    /// The leases as the controller would take them: through admission, with the VPC's
    /// CIDRs known.
    pub fn admit(
        &self,
        config: &ValidatedNetConfig,
        allocation: Allocation,
        leases: Vec<Lease>,
    ) -> LeaseGate {
        let rules = Rules::new(config, allocation).with_vpc_cidrs(self.vpc_cidrs.clone());
        let mut gate = LeaseGate::new(rules, None);
        gate.reset(leases);
        gate
    }

    /// The plan a controller would apply for these (admitted) leases (with Fallback, for the
    /// leases the split routes, and the split).
    pub async fn plan(
        &self,
        leases: &PeerView<'_>,
    ) -> Result<(Reading, Plan, Option<Split>), RoutesError> {
        let wanted: Vec<Wanted> = leases.iter().filter_map(tvpc::route_of).collect();
        let leased = tvpc::leased_subnets(leases.iter());
        let subnets: BTreeSet<String> = leases.iter().filter_map(tvpc::subnet_of).collect();
        let evict_none = BTreeSet::new();
        Ok(self
            .reconciler
            .preview(&Target {
                wanted: &wanted,
                leased: &leased,
                node_subnets: &subnets,
                scope: Scope::Cluster,
                gc: None,
                split: self.fallback_reserved.map(|reserved| SplitRequest {
                    leases: &wanted,
                    reserved,
                    evict: &evict_none,
                }),
            })
            .await?)
    }

    /// Routes of this cluster in any table of the VPC that `query` takes, and how many
    /// strays of ours it leaves (outside the Network, via no lease holder).
    pub async fn orphans(
        &self,
        query: OrphanQuery<'_>,
    ) -> Result<(Vec<Orphan>, usize), RoutesError> {
        if query.leases.is_some_and(|l| l.is_empty()) {
            return Err(RoutesError::NoLeases);
        }
        let reading = self.reconciler.read(&BTreeSet::new()).await?;
        Ok(orphans_in(&reading.all, &self.owner, query))
    }

    /// `config check --cloud`: Network against the VPC, credentials, permissions for every
    /// action the backend uses, the tables, quota headroom. One line per check.
    pub async fn preflight(&self, leases: usize) -> Vec<Check> {
        let mut out = Vec::new();
        let client = self.client.as_ref();
        let vpc = self.reconciler.vpc_id().to_string();
        let filter = [tencent_cloud::vpc::Filter::new("vpc-id", &[vpc.as_str()])];
        match client.describe_vpcs(&filter).await {
            Err(e) => {
                out.push(Check::fail(format!(
                    "credentials and DescribeVpcs: {}",
                    crate::report(&e)
                )));
                return out;
            }
            Ok(vpcs) if vpcs.is_empty() => {
                out.push(Check::fail(format!("VPC {vpc} not found in this region")));
                return out;
            }
            Ok(vpcs) => {
                out.push(Check::ok("credentials accepted (DescribeVpcs)"));
                let cidrs: Vec<String> = vpcs
                    .iter()
                    .flat_map(|v| {
                        v.cidr_block.iter().cloned().chain(
                            v.assistant_cidr_set
                                .iter()
                                .flatten()
                                .filter_map(|a| a.cidr_block.clone()),
                        )
                    })
                    .collect();
                out.push(network_check(self.owner.network, &vpc, &cidrs, "VPC CIDR"));
            }
        }
        match client.describe_subnets(&filter).await {
            Ok(subnets) => {
                let cidrs: Vec<String> = subnets
                    .iter()
                    .filter_map(|s| s.cidr_block.clone())
                    .collect();
                out.push(network_check(self.owner.network, &vpc, &cidrs, "subnet"));
            }
            Err(e) => out.push(Check::fail(format!(
                "DescribeSubnets: {}",
                crate::report(&e)
            ))),
        }
        match client
            .describe_vpc_limits(&[tencent_cloud::vpc::ROUTE_TABLE_MAX_POLICIES])
            .await
        {
            Ok(_) => out.push(Check::ok(
                "permission for DescribeVpcLimits (the route quota)",
            )),
            Err(e) => out.push(Check::fail(format!(
                "DescribeVpcLimits: {} (the quota is then assumed to be 50)",
                crate::report(&e)
            ))),
        }
        let reading = match self.reconciler.read(&BTreeSet::new()).await {
            Ok(r) => r,
            Err(e) => {
                out.push(Check::fail(format!("route tables: {}", crate::report(&e))));
                return out;
            }
        };
        out.push(Check::ok(format!(
            "route tables of {vpc}: {} (programmed when nodes are in their subnets: {})",
            reading
                .all
                .iter()
                .map(|t| t.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            reading.selected.join(", ")
        )));
        for t in &reading.all {
            let free = t.limit.saturating_sub(t.routes.len());
            let line = format!(
                "{}: {}/{} routes used, room for {free} more (leases now: {leases})",
                t.id,
                t.routes.len(),
                t.limit
            );
            out.push(if free >= leases {
                Check::ok(line)
            } else {
                Check::fail(line)
            });
        }
        // Writes have no dry run: an empty request is refused for its parameters when the
        // action is permitted, for authorization when it is not.
        let table = reading
            .all
            .first()
            .map(|t| t.id.clone())
            .unwrap_or_default();
        let probes = [
            (
                "CreateRoutes",
                client.create_routes(&table, &[]).await.err(),
            ),
            (
                "DeleteRoutes",
                client.delete_routes(&table, &[]).await.err(),
            ),
            (
                "ReplaceRoutes",
                client.replace_routes(&table, &[]).await.err(),
            ),
            (
                "EnableRoutes",
                client.enable_routes(&table, &[]).await.err(),
            ),
        ];
        for (action, err) in probes {
            let denied = err.as_ref().and_then(|e| e.code()).is_some_and(|c| {
                c.starts_with("UnauthorizedOperation") || c == "AuthFailure.UnauthorizedOperation"
            });
            out.push(if denied {
                Check::fail(format!("permission for {action}: denied by the CAM policy"))
            } else {
                Check::ok(format!("permission for {action}"))
            });
        }
        out
    }

    /// Delete routes by (table, RouteId), a call per table and 100 routes.
    pub async fn delete(&self, routes: &[Orphan]) -> Result<usize, RoutesError> {
        let mut done = 0;
        let mut tables: Vec<&str> = routes.iter().map(|r| r.table.as_str()).collect();
        tables.sort_unstable();
        tables.dedup();
        for t in tables {
            let ids: Vec<u64> = routes
                .iter()
                .filter(|r| r.table == t)
                .map(|r| r.route_id)
                .collect();
            for chunk in ids.chunks(crate::backend::tencent_vpc::apply::MAX_PER_CALL) {
                match self.client.delete_routes(t, chunk).await {
                    Ok(_) => done += chunk.len(),
                    Err(e) if e.class() == tencent_cloud::ErrorClass::NotFound => {}
                    Err(e) => {
                        return Err(TencentVpcError::Cloud {
                            op: format!("delete routes {chunk:?} in {t}"),
                            source: Box::new(e),
                        }
                        .into())
                    }
                }
            }
        }
        Ok(done)
    }
}

fn apply_overrides(cfg: &mut TencentVpcConfig, o: &Overrides) {
    let set = |field: &mut Option<String>, v: &Option<String>| {
        if v.is_some() {
            field.clone_from(v);
        }
    };
    set(&mut cfg.region, &o.region);
    set(&mut cfg.endpoint, &o.endpoint);
    set(&mut cfg.vpc_id, &o.vpc_id);
    set(&mut cfg.metadata_url, &o.metadata_url);
}

/// The routes of ours `query` takes, and how many strays it leaves. Pure.
pub fn orphans_in(
    tables: &[TableState],
    owner: &Ownership,
    query: OrphanQuery<'_>,
) -> (Vec<Orphan>, usize) {
    let leased = query.leases.map(|l| tvpc::leased_subnets(l.iter()));
    let holders = query.leases.map(|l| tvpc::lease_holders(l, None));
    let mut out = Vec::new();
    let mut strays_left = 0;
    for t in tables {
        for r in &t.routes {
            let Some(dest) = r.dest else { continue };
            let orphan = |stray| Orphan {
                table: t.id.clone(),
                route_id: r.route_id,
                dest,
                via: r.gateway_id.clone(),
                stray,
            };
            if owner.owns(r) {
                if leased.as_ref().is_none_or(|l| !l.contains(&dest)) {
                    out.push(orphan(false));
                }
            } else if owner.stray(r).is_some() {
                let via_holder = holders
                    .as_ref()
                    .is_some_and(|h| r.gateway_id.parse().is_ok_and(|ip| h.contains(&ip)));
                if query.outside_network || via_holder {
                    out.push(orphan(true));
                } else {
                    strays_left += 1;
                }
            }
        }
    }
    (out, strays_left)
}

/// The plan as text: one line per action, then conflicts and full tables.
pub fn render_plan(reading: &Reading, plan: &Plan, split: Option<&Split>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tables: {} (routes per table: {})",
        reading.selected.join(", "),
        reading.account
    );
    if let Some(s) = split {
        let list = |set: &BTreeSet<Ipv4Net>| {
            set.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "fallback vxlan: {} leases routed (room for {}), {} over vxlan{}",
            s.routed.len(),
            s.capacity,
            s.fallback.len(),
            if s.fallback.is_empty() {
                String::new()
            } else {
                format!(": {}", list(&s.fallback))
            }
        );
    }
    for w in &plan.outside {
        let _ = writeln!(
            out,
            "not routed: {} via {} is outside the Network",
            w.dest, w.next_hop
        );
    }
    if plan.tables.is_empty() && plan.conflicts.is_empty() && plan.blocked.is_empty() {
        out.push_str(if split.is_some() {
            "nothing to do: every lease on the routed side is routed\n"
        } else {
            "nothing to do: every lease is routed\n"
        });
        return out;
    }
    for tp in &plan.tables {
        for (id, w) in &tp.replace {
            let _ = writeln!(
                out,
                "{}: replace route {id} with {} via {}",
                tp.table, w.dest, w.next_hop
            );
        }
        for id in &tp.enable {
            let _ = writeln!(out, "{}: enable route {id}", tp.table);
        }
        for id in &tp.delete {
            let _ = writeln!(out, "{}: delete route {id}", tp.table);
        }
        for w in &tp.create {
            let _ = writeln!(
                out,
                "{}: create {} via {} ({})",
                tp.table, w.dest, w.next_hop, w.description
            );
        }
    }
    for c in &plan.conflicts {
        let _ = writeln!(out, "conflict: {c}");
    }
    for b in &plan.blocked {
        let _ = writeln!(out, "blocked: {b}");
    }
    out
}

/// One preflight line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    pub what: String,
}

impl Check {
    fn ok(what: impl Into<String>) -> Check {
        Check {
            ok: true,
            what: what.into(),
        }
    }
    fn fail(what: impl Into<String>) -> Check {
        Check {
            ok: false,
            what: what.into(),
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", if self.ok { "ok  " } else { "FAIL" }, self.what)
    }
}

/// The Network must not overlap any of `cidrs` (the VPC's CIDRs or its subnets): the API
/// refuses routes to destinations inside the VPC.
fn network_check(network: Ipv4Net, vpc: &str, cidrs: &[String], what: &str) -> Check {
    let clash: Vec<&String> = cidrs
        .iter()
        .filter(|c| {
            c.parse::<Ipv4Net>()
                .is_ok_and(|c| c.contains(&network.network()) || network.contains(&c.network()))
        })
        .collect();
    if clash.is_empty() {
        Check::ok(format!(
            "Network {network} is outside every {what} of {vpc}"
        ))
    } else {
        Check::fail(format!(
            "Network {network} overlaps {what} {} of {vpc}: pod routes there are refused",
            clash
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}
