//! What flannelctl's commands do, on either store: the binary parses flags and prints the
//! lines these give. Errors say which exit status they deserve.

use super::routes::{render_plan, OrphanQuery, Overrides, Routes, RoutesError};
use super::LeaseReport;
use crate::backend::tencent_vpc::TencentVpcError;
use crate::subnet::{SubnetError, SubnetManager};

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Store(#[from] SubnetError),
    #[error(transparent)]
    Routes(#[from] RoutesError),
}

/// Exit status for invalid input (as Go's flag package and upstream use).
pub const EXIT_INVALID: u8 = 2;
/// Exit status for a failure that may pass (the store or the API unreachable, throttled).
pub const EXIT_FAILURE: u8 = 1;

impl CtlError {
    /// 1 for what may pass on its own, 2 for what the caller must fix (config, credentials,
    /// permissions, a refusal to act).
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Store(e) if e.is_retryable() => EXIT_FAILURE,
            CtlError::Store(_) => EXIT_INVALID,
            CtlError::Routes(RoutesError::TencentVpc(TencentVpcError::Cloud {
                source, ..
            })) if source.class() == tencent_cloud::ErrorClass::Retryable => EXIT_FAILURE,
            CtlError::Routes(_) => EXIT_INVALID,
        }
    }
}

/// `leases list`: every lease with admission's verdict.
pub async fn leases(store: &dyn SubnetManager) -> Result<LeaseReport, CtlError> {
    Ok(LeaseReport::read(store).await?)
}

/// `routes plan`: what a controller would change for the leases admission lets through,
/// after the refused ones (never routed) and why.
pub async fn routes_plan(store: &dyn SubnetManager, o: &Overrides) -> Result<String, CtlError> {
    let config = store.network_config().await?;
    let leases = store.list_leases().await?;
    let routes = Routes::open(&config, o).await?;
    let gate = routes.admit(&config, store.allocation(), leases);
    let (reading, plan, split) = routes.plan(&gate.view()).await?;
    let mut out = String::new();
    for (lease, refusal) in gate.refused() {
        out.push_str(&format!("refused lease {}: {refusal}\n", lease.key));
    }
    out.push_str(&render_plan(&reading, &plan, split.as_ref()));
    Ok(out)
}

/// `routes gc`'s choices.
#[derive(Debug, Clone, Copy, Default)]
pub struct GcRequest {
    pub dry_run: bool,
    /// Every route of ours, leased or not (an uninstall).
    pub all_ours: bool,
    /// Every stray of ours outside the Network too.
    pub outside_network: bool,
}

/// `routes gc`: our routes whose lease is gone (strays whose next hop holds a lease too),
/// each line passed to `say` as it is decided; then deleted unless a dry run.
pub async fn routes_gc(
    store: &dyn SubnetManager,
    o: &Overrides,
    req: GcRequest,
    say: &mut dyn FnMut(&str),
) -> Result<(), CtlError> {
    let config = store.network_config().await?;
    let leases = store.list_leases().await?;
    let routes = Routes::open(&config, o).await?;
    let gate = routes.admit(&config, store.allocation(), leases);
    let view = gate.view();
    let (orphans, strays_left) = routes
        .orphans(OrphanQuery {
            leases: (!req.all_ours).then_some(&view),
            outside_network: req.outside_network,
        })
        .await?;
    let verb = if req.dry_run {
        "would delete"
    } else {
        "deleting"
    };
    for r in &orphans {
        let what = if r.stray {
            " (outside the Network)"
        } else {
            ""
        };
        say(&format!(
            "{verb} {} route {}: {} via {}{what}",
            r.table, r.route_id, r.dest, r.via
        ));
    }
    if strays_left > 0 {
        say(&format!(
            "{strays_left} routes of ours lie outside the Network via no lease holder: add --outside-network to delete them"
        ));
    }
    if orphans.is_empty() {
        say("nothing to delete");
    }
    if req.dry_run || orphans.is_empty() {
        return Ok(());
    }
    let n = routes.delete(&orphans).await?;
    say(&format!("deleted {n} routes"));
    Ok(())
}
