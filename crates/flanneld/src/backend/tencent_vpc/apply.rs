//! Applying a plan: per table, one call per kind of action (replace, enable, delete, create,
//! in that order), split only at the API's 100 items per call. Answers that describe state
//! rather than failure are taken as state: a Duplicate on create or a stale RouteId on
//! replace asks for a fresh read; ResourceNotFound on delete means done; LimitExceeded lowers
//! the table's known limit. A failure in one table does not stop the others.

use super::plan::{Plan, RouteWrite, TablePlan, NORMAL_CVM};
use crate::backend::BackendError;
use std::collections::BTreeMap;
use tencent_cloud::vpc::{NewRoute, ReplacementRoute};
use tencent_cloud::{Client, ErrorClass};
use tracing::{info, warn};

/// Items per call (EnableRoutes documents 100; the others are kept to the same).
pub const MAX_PER_CALL: usize = 100;

#[derive(Debug, Default)]
pub struct Applied {
    /// Tables whose every action succeeded.
    pub done: Vec<String>,
    pub errors: Vec<BackendError>,
    /// The tables changed behind our back (duplicate, stale id): read them again soon.
    pub refresh: bool,
    /// Tables that answered LimitExceeded: their limit is the usage before the create.
    pub full: BTreeMap<String, usize>,
}

/// `10.244.3.0/24 via 172.16.0.7` and, for a batch, how many more.
fn describe(routes: &[RouteWrite]) -> String {
    match routes {
        [] => String::new(),
        [one] => format!("route {} via {}", one.dest, one.next_hop),
        [first, rest @ ..] => format!(
            "routes {} via {} and {} more",
            first.dest,
            first.next_hop,
            rest.len()
        ),
    }
}

fn cloud(op: String, e: tencent_cloud::Error) -> BackendError {
    BackendError::Cloud {
        op,
        source: Box::new(e),
    }
}

pub async fn apply(client: &Client, plan: &Plan, usage: &BTreeMap<String, usize>) -> Applied {
    let mut out = Applied::default();
    for tp in &plan.tables {
        let before = out.errors.len();
        apply_table(client, tp, usage.get(&tp.table).copied(), &mut out).await;
        if out.errors.len() == before {
            out.done.push(tp.table.clone());
        }
    }
    out
}

async fn apply_table(client: &Client, tp: &TablePlan, usage: Option<usize>, out: &mut Applied) {
    let t = tp.table.as_str();
    for chunk in tp.replace.chunks(MAX_PER_CALL) {
        let routes: Vec<ReplacementRoute> = chunk
            .iter()
            .map(|(id, w)| ReplacementRoute {
                route_id: *id,
                destination_cidr_block: w.dest.to_string(),
                gateway_type: NORMAL_CVM.to_string(),
                gateway_id: w.next_hop.to_string(),
                route_description: Some(w.description.clone()),
            })
            .collect();
        let writes: Vec<RouteWrite> = chunk.iter().map(|(_, w)| w.clone()).collect();
        match client.replace_routes(t, &routes).await {
            Ok(_) => info!(
                table = t,
                count = chunk.len(),
                "replaced {}",
                describe(&writes)
            ),
            Err(e) if e.class() == ErrorClass::StaleRecord => {
                warn!(
                    table = t,
                    "a route to replace is gone; reading the table again"
                );
                out.refresh = true;
            }
            Err(e) => out
                .errors
                .push(cloud(format!("replace {} in {t}", describe(&writes)), e)),
        }
    }
    for chunk in tp.enable.chunks(MAX_PER_CALL) {
        match client.enable_routes(t, chunk).await {
            Ok(()) => info!(table = t, route_ids = ?chunk, "enabled routes"),
            Err(e) if e.class() == ErrorClass::NotFound => out.refresh = true,
            Err(e) => out
                .errors
                .push(cloud(format!("enable routes {chunk:?} in {t}"), e)),
        }
    }
    for chunk in tp.delete.chunks(MAX_PER_CALL) {
        match client.delete_routes(t, chunk).await {
            Ok(_) => info!(table = t, route_ids = ?chunk, "deleted routes"),
            // Gone already: what we wanted.
            Err(e)
                if e.class() == ErrorClass::NotFound
                    && e.code() != Some("ResourceNotFound.RouteTable") =>
            {
                out.refresh = true
            }
            Err(e) => out
                .errors
                .push(cloud(format!("delete routes {chunk:?} in {t}"), e)),
        }
    }
    for chunk in tp.create.chunks(MAX_PER_CALL) {
        let routes: Vec<NewRoute> = chunk
            .iter()
            .map(|w| NewRoute {
                destination_cidr_block: w.dest.to_string(),
                gateway_type: NORMAL_CVM.to_string(),
                gateway_id: w.next_hop.to_string(),
                route_description: Some(w.description.clone()),
            })
            .collect();
        match client.create_routes(t, &routes).await {
            Ok(_) => info!(
                table = t,
                count = chunk.len(),
                "created {}",
                describe(chunk)
            ),
            Err(e) if e.class() == ErrorClass::Duplicate => {
                warn!(
                    table = t,
                    "{} exists already; reading the table again",
                    describe(chunk)
                );
                out.refresh = true;
            }
            Err(e) if e.code().is_some_and(|c| c.starts_with("LimitExceeded")) => {
                let used = usage.unwrap_or_default();
                out.full.insert(t.to_string(), used);
                out.errors.push(cloud(
                    format!(
                        "create {} in {t} ({used} routes in the table)",
                        describe(chunk)
                    ),
                    e,
                ));
            }
            Err(e) => out
                .errors
                .push(cloud(format!("create {} in {t}", describe(chunk)), e)),
        }
    }
}
