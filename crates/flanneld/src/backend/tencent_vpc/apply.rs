//! Applying a plan: per table, one call per kind of action (replace, enable, delete, create,
//! in that order), split only at the API's 100 items per call. Answers that describe state
//! rather than failure are taken as state: a Duplicate on create or a stale RouteId on
//! replace asks for a fresh read; ResourceNotFound on delete means done; LimitExceeded lowers
//! the table's known limit. A batch the API refuses for one of its items (a next hop that is
//! no CVM, say: the call is all-or-nothing) is halved until the refused item is alone, so
//! every other route is still written and the refused one is reported by destination. A
//! failure in one table does not stop the others.

use super::cloud::VpcRoutes;
use super::plan::{Plan, RouteWrite, TablePlan, NORMAL_CVM};
use super::TencentVpcError;
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use tencent_cloud::vpc::{NewRoute, ReplacementRoute};
use tencent_cloud::ErrorClass;
use tracing::{info, warn, Instrument};

/// Items per call (EnableRoutes documents 100; the others are kept to the same).
pub const MAX_PER_CALL: usize = 100;

#[derive(Debug, Default)]
pub struct Applied {
    /// Tables whose every action succeeded.
    pub done: Vec<String>,
    pub errors: Vec<TencentVpcError>,
    /// The tables changed behind our back (duplicate, stale id): read them again soon.
    pub refresh: bool,
    /// Tables that answered LimitExceeded: their limit is the usage before the create.
    pub full: BTreeMap<String, usize>,
    /// Routes the API refused on their own (table, destination, the refusal): retried at the
    /// next resync, never sooner.
    pub rejected: Vec<(String, Ipv4Net, TencentVpcError)>,
}

/// An answer that refuses something in the request (a parameter, an operation), as opposed to
/// the account, the table or the service: worth narrowing down to the item.
fn refuses_an_item(e: &tencent_cloud::Error) -> bool {
    e.class() == ErrorClass::Fatal
        && e.code().is_some_and(|c| {
            (c.starts_with("InvalidParameter") || c.starts_with("UnsupportedOperation"))
                && !c.contains("LimitExceeded")
        })
}

/// Split a refused batch in halves (front first), or say the single item is the one.
fn halve<T>(batch: &[T]) -> Option<(&[T], &[T])> {
    (batch.len() > 1).then(|| batch.split_at(batch.len() / 2))
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

fn cloud(op: String, e: tencent_cloud::Error) -> TencentVpcError {
    TencentVpcError::Cloud {
        op,
        source: Box::new(e),
    }
}

pub async fn apply(
    client: &dyn VpcRoutes,
    plan: &Plan,
    usage: &BTreeMap<String, usize>,
) -> Applied {
    let mut out = Applied::default();
    for tp in &plan.tables {
        let before = out.errors.len();
        let span = tracing::info_span!("table", table = %tp.table);
        apply_table(client, tp, usage.get(&tp.table).copied(), &mut out)
            .instrument(span)
            .await;
        if out.errors.len() == before {
            out.done.push(tp.table.clone());
        }
    }
    out
}

async fn apply_table(
    client: &dyn VpcRoutes,
    tp: &TablePlan,
    usage: Option<usize>,
    out: &mut Applied,
) {
    let t = tp.table.as_str();
    let mut batches: Vec<&[(u64, RouteWrite)]> = tp.replace.chunks(MAX_PER_CALL).rev().collect();
    while let Some(chunk) = batches.pop() {
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
            Ok(()) => info!(
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
            Err(e) if refuses_an_item(&e) => match halve(chunk) {
                Some((front, back)) => batches.extend([back, front]),
                None => out.rejected.push((
                    t.to_string(),
                    writes[0].dest,
                    cloud(format!("replace {} in {t}", describe(&writes)), e),
                )),
            },
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
            Ok(()) => info!(table = t, route_ids = ?chunk, "deleted routes"),
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
    let mut batches: Vec<&[RouteWrite]> = tp.create.chunks(MAX_PER_CALL).rev().collect();
    while let Some(chunk) = batches.pop() {
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
            Ok(()) => info!(
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
            Err(e) if refuses_an_item(&e) => match halve(chunk) {
                Some((front, back)) => batches.extend([back, front]),
                None => out.rejected.push((
                    t.to_string(),
                    chunk[0].dest,
                    cloud(format!("create {} in {t}", describe(chunk)), e),
                )),
            },
            Err(e) => out
                .errors
                .push(cloud(format!("create {} in {t}", describe(chunk)), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_batch_is_halved_front_first_down_to_one_item() {
        let items = [1, 2, 3, 4, 5];
        assert_eq!(halve(&items), Some((&items[..2], &items[2..])));
        assert_eq!(halve(&items[..1]), None);
        let code = |c: &str| {
            tencent_cloud::Error::Api(tencent_cloud::ApiError {
                code: c.into(),
                message: String::new(),
                request_id: String::new(),
                action: "CreateRoutes".into(),
            })
        };
        assert!(refuses_an_item(&code(
            "InvalidParameterValue.RouteNextHopInvalid"
        )));
        assert!(refuses_an_item(&code("UnsupportedOperation.Ecmp")));
        assert!(!refuses_an_item(&code(
            "InvalidParameterValue.LimitExceeded"
        )));
        assert!(!refuses_an_item(&code("InvalidParameterValue.Duplicate")));
        assert!(!refuses_an_item(&code("UnauthorizedOperation")));
        assert!(!refuses_an_item(&code("RequestLimitExceeded")));
    }
}
