//! The CVM metadata service: answers for the instance whose private IP is the request's
//! source address (or a configured default instance), and mints CAM role credentials.

use super::{random_hex, Credential, Shared};
use crate::ops;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use tracing::warn;

impl Shared {
    /// Current (or freshly minted) credentials of a CAM role.
    fn role_credentials(&self, role: &str, now: i64) -> Value {
        let ttl = self.read(|s| s.role_credential_ttl_secs as i64);
        let mut roles = self.roles.lock().unwrap();
        let current = roles
            .get(role)
            .filter(|(_, exp)| exp - now > ttl / 2)
            .and_then(|(id, _)| Some((id.clone(), self.creds.lock().unwrap().get(id)?.clone())));
        let (id, c) = match current {
            Some(found) => found,
            None => {
                let id = format!("AKIDtmp{}", random_hex(24));
                let c = Credential {
                    secret_key: random_hex(32),
                    token: Some(random_hex(64)),
                    expires_at: Some(now + ttl),
                };
                self.creds.lock().unwrap().insert(id.clone(), c.clone());
                roles.insert(role.to_string(), (id.clone(), now + ttl));
                (id, c)
            }
        };
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

async fn metadata(
    State(sh): State<std::sync::Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(path): Path<String>,
) -> Response {
    answer(&sh, None, peer, &path)
}

/// `/instances/<id>/latest/meta-data/...`: the answers instance `<id>` would get (not a real
/// endpoint: it lets several simulated nodes on one loopback address be told apart).
async fn metadata_of(
    State(sh): State<std::sync::Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((id, path)): Path<(String, String)>,
) -> Response {
    answer(&sh, Some(&id), peer, &path)
}

fn answer(sh: &Shared, id: Option<&str>, peer: SocketAddr, path: &str) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "404 - Not Found").into_response();
    let state = sh.snapshot();
    let source = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let inst = match id {
        Some(id) => state.instances.iter().find(|i| i.instance_id == id),
        None => state
            .instances
            .iter()
            .find(|i| IpAddr::V4(i.private_ip) == source)
            .or_else(|| {
                sh.default_instance
                    .as_ref()
                    .and_then(|d| state.instances.iter().find(|i| &i.instance_id == d))
            }),
    };
    let Some(inst) = inst else {
        warn!(%source, path, "metadata request from an address that is no instance");
        return not_found();
    };
    let Some(subnet) = state.subnets.iter().find(|s| s.subnet_id == inst.subnet_id) else {
        warn!(instance = %inst.instance_id, subnet = %inst.subnet_id, "instance in an unknown subnet");
        return not_found();
    };
    let mac_prefix = format!("network/interfaces/macs/{}/", inst.mac);
    let text = match path {
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
        .route("/instances/{id}/latest/meta-data/{*path}", get(metadata_of))
        .with_state(sh)
}
