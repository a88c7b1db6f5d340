//! The three listeners: the signed API on `POST /`, the metadata service (answers for the
//! instance whose private IP is the request's source address), and the admin API (faults,
//! state, call counts, console edits, reset).

use crate::dataplane::Dataplane;
use crate::ops::{self, err, ApiErr};
use crate::scenario::Scenario;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use tencent_cloud::signing::{parse_authorization, sign, SigningInput};
use tracing::{debug, info, warn};

/// Maximum clock skew accepted (5 minutes, as the real API).
pub const MAX_SKEW_SECS: i64 = 300;

#[derive(Debug, Clone)]
struct Credential {
    secret_key: String,
    token: Option<String>,
    expires_at: Option<i64>,
}

/// A fault injected through the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// An action name, or `*` for every action.
    #[serde(default = "star")]
    pub action: String,
    /// Fraction of calls answered with `error_code` (0..=1).
    #[serde(default)]
    pub error_rate: f64,
    #[serde(default = "default_fault_code")]
    pub error_code: String,
    /// Added before answering.
    #[serde(default)]
    pub latency_ms: u64,
    /// Fraction of calls whose connection is dropped mid-response.
    #[serde(default)]
    pub drop_rate: f64,
}

fn star() -> String {
    "*".into()
}
fn default_fault_code() -> String {
    "RequestLimitExceeded".into()
}

pub struct Shared {
    pub state: Mutex<Scenario>,
    initial: Scenario,
    creds: Mutex<HashMap<String, Credential>>,
    roles: Mutex<HashMap<String, (String, i64)>>,
    rate: Mutex<HashMap<String, (i64, u32)>>,
    faults: Mutex<Vec<Fault>>,
    calls: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    state_file: Option<PathBuf>,
    pub dataplane: Option<Dataplane>,
    default_instance: Option<String>,
}

impl Shared {
    pub fn new(
        scenario: Scenario,
        initial: Scenario,
        state_file: Option<PathBuf>,
        dataplane: Option<Dataplane>,
        default_instance: Option<String>,
    ) -> Shared {
        let creds = Self::static_creds(&initial);
        Shared {
            state: Mutex::new(scenario),
            initial,
            creds: Mutex::new(creds),
            roles: Mutex::new(HashMap::new()),
            rate: Mutex::new(HashMap::new()),
            faults: Mutex::new(Vec::new()),
            calls: Mutex::new(BTreeMap::new()),
            state_file,
            dataplane,
            default_instance,
        }
    }

    fn static_creds(s: &Scenario) -> HashMap<String, Credential> {
        s.credentials
            .iter()
            .map(|c| {
                (
                    c.secret_id.clone(),
                    Credential {
                        secret_key: c.secret_key.clone(),
                        token: c.token.clone(),
                        expires_at: c.expires_at,
                    },
                )
            })
            .collect()
    }

    fn count(&self, action: &str, result: &str) {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(action.to_string())
            .or_default()
            .entry(result.to_string())
            .or_default() += 1;
    }

    /// Persist and mirror into the data plane after a change.
    pub async fn after_change(&self) {
        let snapshot = self.state.lock().unwrap().clone();
        if let Some(path) = &self.state_file {
            let text = serde_json::to_string_pretty(&snapshot).expect("state serialises");
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let written = tempfile::NamedTempFile::new_in(dir)
                .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()).map(|_| f))
                .and_then(|f| f.persist(path).map_err(|e| e.error));
            if let Err(e) = written {
                warn!(path = %path.display(), error = %e, "writing the state file failed");
            }
        }
        if let Some(dp) = &self.dataplane {
            dp.sync(&snapshot).await;
        }
    }

    /// Verify TC3 authentication; returns the service named in the credential scope.
    fn authenticate(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<String, ApiErr> {
        let h = |k: &str| header(headers, k);
        let auth = parse_authorization(h("authorization")).ok_or_else(|| {
            err(
                "AuthFailure.InvalidAuthorization",
                "The Authorization header is missing or malformed.",
            )
        })?;
        let ts: i64 = h("x-tc-timestamp").parse().map_err(|_| {
            err(
                "AuthFailure.InvalidAuthorization",
                "X-TC-Timestamp is missing or not a number.",
            )
        })?;
        if (now - ts).abs() > MAX_SKEW_SECS {
            return Err(err(
                "AuthFailure.SignatureExpire",
                format!(
                    "The request timestamp {ts} is more than 5 minutes from the server time {now}."
                ),
            ));
        }
        let cred = self
            .creds
            .lock()
            .unwrap()
            .get(&auth.secret_id)
            .cloned()
            .ok_or_else(|| err("AuthFailure.SecretIdNotFound", "The SecretId is not found."))?;
        if auth.signed_headers != "content-type;host" {
            return Err(err(
                "AuthFailure.SignatureFailure",
                "SignedHeaders must be content-type;host.",
            ));
        }
        let expected = sign(&SigningInput {
            secret_id: &auth.secret_id,
            secret_key: &cred.secret_key,
            service: &auth.service,
            host: h("host"),
            method: "POST",
            content_type: h("content-type"),
            canonical_query: "",
            payload: body,
            timestamp: ts,
        });
        if expected.signature != auth.signature || auth.date != tencent_cloud::signing::utc_date(ts)
        {
            return Err(err(
                "AuthFailure.SignatureFailure",
                "The provided credentials could not be validated.",
            ));
        }
        if let Some(token) = &cred.token {
            if h("x-tc-token") != token {
                return Err(err(
                    "AuthFailure.TokenFailure",
                    "The token is missing or invalid.",
                ));
            }
        }
        if cred.expires_at.is_some_and(|e| now >= e) {
            return Err(err(
                "AuthFailure.TokenFailure",
                "The temporary credentials have expired.",
            ));
        }
        Ok(auth.service)
    }

    fn rate_limited(&self, action: &str, now: i64) -> bool {
        let limit = self.state.lock().unwrap().rate_limit_per_second;
        let mut r = self.rate.lock().unwrap();
        let e = r.entry(action.to_string()).or_insert((now, 0));
        if e.0 != now {
            *e = (now, 0);
        }
        e.1 += 1;
        f64::from(e.1) > limit
    }

    fn fault_for(&self, action: &str) -> Option<Fault> {
        let f = self.faults.lock().unwrap();
        f.iter()
            .rev()
            .find(|f| f.action == action)
            .or_else(|| f.iter().rev().find(|f| f.action == "*"))
            .cloned()
    }

    /// Current (or freshly minted) credentials of a CAM role.
    fn role_credentials(&self, role: &str, now: i64) -> Value {
        let ttl = self.state.lock().unwrap().role_credential_ttl_secs as i64;
        let mut roles = self.roles.lock().unwrap();
        let id = match roles.get(role) {
            Some((id, exp)) if exp - now > ttl / 2 => id.clone(),
            _ => {
                let hex = |n: usize| -> String {
                    let mut rng = rand::thread_rng();
                    (0..n)
                        .map(|_| format!("{:x}", rng.gen_range(0..16u8)))
                        .collect()
                };
                let id = format!("AKIDtmp{}", hex(24));
                self.creds.lock().unwrap().insert(
                    id.clone(),
                    Credential {
                        secret_key: hex(32),
                        token: Some(hex(64)),
                        expires_at: Some(now + ttl),
                    },
                );
                roles.insert(role.to_string(), (id.clone(), now + ttl));
                id
            }
        };
        let c = self
            .creds
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .expect("minted above");
        let exp = c.expires_at.unwrap_or(now);
        json!({
            "TmpSecretId": id,
            "TmpSecretKey": c.secret_key,
            "Token": c.token,
            "ExpiredTime": exp,
            "Expiration": format!("{}Z", ops::created_time(exp).replacen(' ', "T", 1)),
            "Code": "Success",
        })
    }
}

/// A request header as text ("" when absent or not UTF-8).
fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

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

async fn api(
    State(sh): State<std::sync::Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let action = header(&headers, "x-tc-action").to_string();
    let now = tencent_cloud::unix_now();
    let result = handle(&sh, &action, &headers, &body, now).await;
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
            Response::builder()
                .status(StatusCode::OK)
                .body(Body::from_stream(stream))
                .expect("a valid response")
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
        let (drop, fail) = {
            let mut rng = rand::thread_rng();
            (
                rng.gen_bool(f.drop_rate.clamp(0.0, 1.0)),
                rng.gen_bool(f.error_rate.clamp(0.0, 1.0)),
            )
        };
        if drop {
            return Err(Outcome::Dropped);
        }
        if fail {
            return Err(err(&f.error_code, "Injected fault.").into());
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
    let region = sh.state.lock().unwrap().region.clone();
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
    let result = {
        let mut state = sh.state.lock().unwrap();
        ops::dispatch(&mut state, &service, action, &req, now)
    };
    if result.is_ok() && ops::mutates(action) {
        sh.after_change().await;
    }
    result.map_err(Outcome::Api)
}

pub fn api_router(sh: std::sync::Arc<Shared>) -> Router {
    Router::new()
        .route("/", post(api))
        .fallback(|| async {
            envelope(
                &uuid::Uuid::new_v4().to_string(),
                Err(err(
                    "InvalidAction",
                    "Requests are POST / with X-TC-Action.",
                )),
            )
        })
        .with_state(sh)
}

// ---- metadata ----

async fn metadata(
    State(sh): State<std::sync::Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(path): Path<String>,
) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "404 - Not Found").into_response();
    let state = sh.state.lock().unwrap().clone();
    let source = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let inst = state
        .instances
        .iter()
        .find(|i| IpAddr::V4(i.private_ip) == source)
        .or_else(|| {
            sh.default_instance
                .as_ref()
                .and_then(|d| state.instances.iter().find(|i| &i.instance_id == d))
        });
    let Some(inst) = inst else {
        warn!(%source, path, "metadata request from an address that is no instance");
        return not_found();
    };
    let subnet = state
        .subnets
        .iter()
        .find(|s| s.subnet_id == inst.subnet_id)
        .expect("validated scenario");
    let mac_prefix = format!("network/interfaces/macs/{}/", inst.mac);
    let text = match path.as_str() {
        "placement/region" => state.region.clone(),
        "placement/zone" => subnet.zone.clone(),
        "instance-id" => inst.instance_id.clone(),
        "instance-name" => inst.name.clone(),
        "uuid" => inst.instance_id.clone(),
        "mac" => inst.mac.clone(),
        "local-ipv4" => inst.private_ip.to_string(),
        "network/interfaces/macs/" | "network/interfaces/macs" => format!("{}/", inst.mac),
        "cam/security-credentials/" | "cam/security-credentials" => match &inst.role {
            Some(r) => r.clone(),
            None => return not_found(),
        },
        p if p.starts_with(&mac_prefix) => match &p[mac_prefix.len()..] {
            "mac" => inst.mac.clone(),
            "vpc-id" => subnet.vpc_id.clone(),
            "subnet-id" => subnet.subnet_id.clone(),
            "primary-local-ipv4" => inst.private_ip.to_string(),
            "local-ipv4s/" | "local-ipv4s" => format!("{}/", inst.private_ip),
            _ => return not_found(),
        },
        p if p.starts_with("cam/security-credentials/") => {
            let role = &p["cam/security-credentials/".len()..];
            if inst.role.as_deref() != Some(role) {
                return not_found();
            }
            return Json(sh.role_credentials(role, tencent_cloud::unix_now())).into_response();
        }
        _ => return not_found(),
    };
    text.into_response()
}

pub fn metadata_router(sh: std::sync::Arc<Shared>) -> Router {
    Router::new()
        .route("/latest/meta-data/{*path}", get(metadata))
        .with_state(sh)
}

// ---- admin ----

type Sh = State<std::sync::Arc<Shared>>;

/// The account's state; secret keys and tokens are redacted (they stay in `--state`).
async fn admin_state(State(sh): Sh) -> Json<Scenario> {
    let mut s = sh.state.lock().unwrap().clone();
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
    Json(sh.faults.lock().unwrap().clone())
}

async fn admin_add_fault(State(sh): Sh, body: Bytes) -> Response {
    match serde_json::from_slice::<Fault>(&body) {
        Ok(f) if (0.0..=1.0).contains(&f.error_rate) && (0.0..=1.0).contains(&f.drop_rate) => {
            info!(?f, "fault injected");
            let mut faults = sh.faults.lock().unwrap();
            faults.retain(|x| x.action != f.action);
            faults.push(f);
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

async fn admin_reset(State(sh): Sh) -> StatusCode {
    *sh.state.lock().unwrap() = sh.initial.clone();
    sh.faults.lock().unwrap().clear();
    sh.calls.lock().unwrap().clear();
    sh.rate.lock().unwrap().clear();
    sh.after_change().await;
    StatusCode::NO_CONTENT
}

/// Console edits bypass authentication, rate limits and call counts, like a human in the
/// web console; they still go to the state file and the data plane.
async fn console(sh: &Shared, f: impl FnOnce(&mut Scenario) -> Result<Value, ApiErr>) -> Response {
    let r = {
        let mut s = sh.state.lock().unwrap();
        f(&mut s)
    };
    match r {
        Ok(v) => {
            sh.after_change().await;
            Json(v).into_response()
        }
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
