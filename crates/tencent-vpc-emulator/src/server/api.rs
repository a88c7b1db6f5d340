//! `POST /`: faults, authentication, version and region checks, rate limits, then the action.
//! Every answer, errors included, is HTTP 200 with `Response.Error`, as the real API.

use super::{header, request_id, Shared};
use crate::ops::{self, err, ApiErr};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use std::time::Duration;
use tracing::debug;

fn envelope(request_id: &str, result: Result<Value, ApiErr>) -> Response {
    let body = match result {
        Ok(mut v) => {
            v["RequestId"] = json!(request_id);
            json!({"Response": v})
        }
        Err(e) => {
            json!({"Response": {"Error": {"Code": e.code, "Message": e.message}, "RequestId": request_id}})
        }
    };
    ([("content-type", "application/json")], body.to_string()).into_response()
}

/// The largest request body accepted (the API's documented POST limit is 10 MB; route
/// calls are a few KB). Larger bodies get `RequestSizeLimitExceeded` in the envelope.
pub const MAX_BODY_BYTES: usize = 10 << 20;

async fn api(State(sh): State<std::sync::Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let request_id = request_id();
    let action = header(&headers, "x-tc-action").to_string();
    let now = tencent_cloud::unix_now();
    let result = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => handle(&sh, &action, &headers, &body, now).await,
        Err(_) => Err(Outcome::Api(err(
            "RequestSizeLimitExceeded",
            format!("The request body exceeds {MAX_BODY_BYTES} bytes."),
        ))),
    };
    let outcome = match &result {
        Ok(_) => "Success".to_string(),
        Err(Outcome::Api(e)) => e.code.clone(),
        Err(Outcome::Dropped) => "Dropped".to_string(),
    };
    sh.count(if action.is_empty() { "(none)" } else { &action }, &outcome);
    debug!(action, outcome, request_id, "api call");
    match result {
        Ok(v) => envelope(&request_id, Ok(v)),
        Err(Outcome::Api(e)) => envelope(&request_id, Err(e)),
        Err(Outcome::Dropped) => {
            // Headers go out, then the body fails: the client sees the connection drop.
            let stream = futures::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other("dropped by fault injection"))
            });
            let mut resp = Response::new(Body::from_stream(stream));
            *resp.status_mut() = StatusCode::OK;
            resp
        }
    }
}

enum Outcome {
    Api(ApiErr),
    Dropped,
}

impl From<ApiErr> for Outcome {
    fn from(e: ApiErr) -> Self {
        Outcome::Api(e)
    }
}

async fn handle(
    sh: &Shared,
    action: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<Value, Outcome> {
    if let Some(f) = sh.fault_for(action) {
        if f.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
        }
        if f.drop {
            return Err(Outcome::Dropped);
        }
        if let Some(code) = f.error_code {
            return Err(err(&code, "Injected fault.").into());
        }
    }
    let service = sh.authenticate(headers, body, now)?;
    if action.is_empty() {
        return Err(err("MissingParameter", "The X-TC-Action header is missing.").into());
    }
    let h = |k: &str| header(headers, k);
    if h("x-tc-version") != "2017-03-12" {
        return Err(err(
            "NoSuchVersion",
            format!("The API version {:?} does not exist.", h("x-tc-version")),
        )
        .into());
    }
    let region = sh.read(|s| s.region.clone());
    if h("x-tc-region") != region {
        return Err(err(
            "UnsupportedRegion",
            format!(
                "The region {:?} is not supported here (emulating {region}).",
                h("x-tc-region")
            ),
        )
        .into());
    }
    if sh.rate_limited(action, now) {
        return Err(err(
            "RequestLimitExceeded",
            format!("The request rate of {action} exceeds the limit."),
        )
        .into());
    }
    let req: Value = serde_json::from_slice(body).map_err(|e| {
        err(
            "InvalidParameter",
            format!("The request body is not valid JSON: {e}."),
        )
    })?;
    let Value::Object(req) = req else {
        return Err(err(
            "InvalidParameter",
            "The request body must be a JSON object.",
        )
        .into());
    };
    let action = ops::action(&service, action)?;
    let result = match action.run {
        ops::Run::Read(f) => sh.read(|s| f(s, &req)),
        ops::Run::Write(f) => sh.mutate(|s| f(s, &req, now)).await,
    };
    result.map_err(Outcome::Api)
}

/// Anything but `POST /` (another path or method): the envelope, never a bare 404 or 405.
async fn not_an_api_call() -> Response {
    envelope(
        &request_id(),
        Err(err(
            "InvalidAction",
            "Requests are POST / with X-TC-Action.",
        )),
    )
}

pub fn api_router(sh: std::sync::Arc<Shared>) -> Router {
    Router::new()
        .route("/", post(api).fallback(not_an_api_call))
        .fallback(not_an_api_call)
        // The body limit is ours (above), answered in the envelope.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(sh)
}
