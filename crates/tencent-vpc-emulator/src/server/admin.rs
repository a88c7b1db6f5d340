//! The admin API: state (secrets redacted), call counts, faults, reset, and console edits.

use super::{Fault, Lag, Shared};
use crate::ops::{self, ApiErr};
use crate::scenario::Scenario;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tracing::info;

type Sh = State<std::sync::Arc<Shared>>;

/// The account's state; secret keys and tokens are redacted (they stay in `--state`).
async fn admin_state(State(sh): Sh) -> Json<Scenario> {
    let mut s = sh.snapshot();
    for c in &mut s.credentials {
        c.secret_key = "<redacted>".into();
        if c.token.is_some() {
            c.token = Some("<redacted>".into());
        }
    }
    Json(s)
}

async fn admin_calls(State(sh): Sh) -> Json<BTreeMap<String, BTreeMap<String, u64>>> {
    Json(sh.calls.lock().unwrap().clone())
}

async fn admin_faults(State(sh): Sh) -> Json<Vec<Fault>> {
    Json(sh.faults())
}

async fn admin_add_fault(State(sh): Sh, body: Bytes) -> Response {
    match serde_json::from_slice::<Fault>(&body) {
        Ok(f) if (0.0..=1.0).contains(&f.error_rate) && (0.0..=1.0).contains(&f.drop_rate) => {
            info!(?f, "fault injected");
            sh.add_fault(f);
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(_) => (
            StatusCode::BAD_REQUEST,
            "error_rate and drop_rate must be within 0..=1",
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("invalid fault: {e}")).into_response(),
    }
}

async fn admin_clear_faults(State(sh): Sh) -> StatusCode {
    sh.faults.lock().unwrap().clear();
    StatusCode::NO_CONTENT
}

/// The data plane's lag behind the API: `{"delay_ms": N}` (each change forwards N ms after
/// the call answered) or `{"never": true}` (until cleared).
async fn admin_set_lag(State(sh): Sh, body: Bytes) -> Response {
    match serde_json::from_slice::<Lag>(&body) {
        Ok(lag) if lag.never != lag.delay_ms.is_some() => {
            info!(?lag, "data plane lags the API");
            sh.set_lag(Some(lag)).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(_) => (
            StatusCode::BAD_REQUEST,
            "give either delay_ms or never: true",
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("invalid lag: {e}")).into_response(),
    }
}

async fn admin_lag(State(sh): Sh) -> Json<Option<Lag>> {
    Json(sh.lag())
}

/// The data plane catches up with the API and follows it again.
async fn admin_clear_lag(State(sh): Sh) -> StatusCode {
    sh.set_lag(None).await;
    StatusCode::NO_CONTENT
}

async fn admin_reset(State(sh): Sh) -> StatusCode {
    sh.set_lag(None).await;
    sh.faults.lock().unwrap().clear();
    sh.calls.lock().unwrap().clear();
    sh.rate.lock().unwrap().clear();
    let _ = sh
        .mutate(|s| {
            *s = sh.initial.clone();
            Ok::<(), ()>(())
        })
        .await;
    StatusCode::NO_CONTENT
}

/// Change the routes-per-table quota at run time (`{"route_quota": N}`), as a quota raise
/// by support would: DescribeVpcLimits answers the new value, CreateRoutes checks against it.
async fn admin_quota(State(sh): Sh, body: Bytes) -> Response {
    let quota = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("route_quota")?.as_u64())
        .filter(|q| *q > 0);
    let Some(quota) = quota else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"Code": "InvalidParameter", "Message": "expected {\"route_quota\": N} with N > 0"})),
        )
            .into_response();
    };
    console(&sh, |s| {
        s.route_quota = quota as usize;
        Ok(json!({"route_quota": quota}))
    })
    .await
}

/// Console edits bypass authentication, rate limits and call counts, like a human in the
/// web console; they still go to the state file and the data plane.
async fn console(sh: &Shared, f: impl FnOnce(&mut Scenario) -> Result<Value, ApiErr>) -> Response {
    match sh.mutate(f).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"Code": e.code, "Message": e.message})),
        )
            .into_response(),
    }
}

async fn admin_delete_route(State(sh): Sh, Path((rtb, id)): Path<(String, u64)>) -> Response {
    console(&sh, |s| {
        ops::delete_routes(
            s,
            json!({"RouteTableId": rtb, "Routes": [{"RouteId": id}]})
                .as_object()
                .unwrap(),
        )
    })
    .await
}

async fn admin_toggle_route(
    State(sh): Sh,
    Path((rtb, id, what)): Path<(String, u64, String)>,
) -> Response {
    let enable = match what.as_str() {
        "enable" => true,
        "disable" => false,
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    console(&sh, |s| {
        ops::toggle_routes(
            s,
            json!({"RouteTableId": rtb, "RouteIds": [id]})
                .as_object()
                .unwrap(),
            enable,
        )
    })
    .await
}

async fn admin_add_route(
    State(sh): Sh,
    Path(rtb): Path<String>,
    Json(route): Json<Value>,
) -> Response {
    console(&sh, |s| {
        ops::create_routes(
            s,
            json!({"RouteTableId": rtb, "Routes": [route]})
                .as_object()
                .unwrap(),
            tencent_cloud::unix_now(),
        )
    })
    .await
}

pub fn admin_router(sh: std::sync::Arc<Shared>) -> Router {
    Router::new()
        .route("/state", get(admin_state))
        .route("/calls", get(admin_calls))
        .route(
            "/faults",
            get(admin_faults)
                .post(admin_add_fault)
                .delete(admin_clear_faults),
        )
        .route("/reset", post(admin_reset))
        .route(
            "/dataplane-lag",
            get(admin_lag).post(admin_set_lag).delete(admin_clear_lag),
        )
        .route("/quota", post(admin_quota))
        .route("/route-tables/{rtb}/routes", post(admin_add_route))
        .route(
            "/route-tables/{rtb}/routes/{id}",
            delete(admin_delete_route),
        )
        .route(
            "/route-tables/{rtb}/routes/{id}/{what}",
            post(admin_toggle_route),
        )
        .with_state(sh)
}
