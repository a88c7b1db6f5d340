//! The scenario file: the emulated account's initial state. The same format is written by
//! `--state FILE` so a restarted emulator keeps its routes. Unknown fields are errors that
//! name the field, so a typo never silently changes a rehearsal.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

fn default_quota() -> usize {
    50
}
fn default_rate() -> f64 {
    100.0
}
fn default_role_ttl() -> u64 {
    7200
}
fn default_true() -> bool {
    true
}
fn default_user() -> String {
    "USER".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub region: String,
    #[serde(default)]
    pub credentials: Vec<CredentialSpec>,
    pub vpcs: Vec<VpcSpec>,
    pub route_tables: Vec<RouteTableSpec>,
    #[serde(default)]
    pub subnets: Vec<SubnetSpec>,
    #[serde(default)]
    pub instances: Vec<InstanceSpec>,
    /// Routes per route table (Tencent's default quota is 50).
    #[serde(default = "default_quota")]
    pub route_quota: usize,
    /// Requests per second per action (the documented limit is 100).
    #[serde(default = "default_rate")]
    pub rate_limit_per_second: f64,
    /// Lifetime of minted CAM role credentials.
    #[serde(default = "default_role_ttl")]
    pub role_credential_ttl_secs: u64,
    /// Next RouteId to hand out (kept by `--state`).
    #[serde(default)]
    pub next_route_id: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSpec {
    pub secret_id: String,
    pub secret_key: String,
    /// Temporary credentials carry a token and an expiry (unix seconds).
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpcSpec {
    pub vpc_id: String,
    pub cidr_block: Ipv4Net,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTableSpec {
    pub route_table_id: String,
    pub vpc_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub main: bool,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Resource tags (`TagSet`, the `tag-key` filter).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    #[serde(default)]
    pub route_id: u64,
    #[serde(default)]
    pub route_item_id: String,
    pub destination_cidr_block: Ipv4Net,
    pub gateway_type: String,
    pub gateway_id: String,
    #[serde(default)]
    pub route_description: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_user")]
    pub route_type: String,
    #[serde(default)]
    pub created_time: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetSpec {
    pub subnet_id: String,
    pub vpc_id: String,
    pub cidr_block: Ipv4Net,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub name: String,
    /// The subnet's route table; the VPC's main table when absent.
    #[serde(default)]
    pub route_table_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    pub instance_id: String,
    pub private_ip: Ipv4Addr,
    pub subnet_id: String,
    pub mac: String,
    #[serde(default)]
    pub name: String,
    /// CAM role bound to the instance (metadata serves its temporary credentials).
    #[serde(default)]
    pub role: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("scenario: {0}")]
    Parse(String),
    #[error("scenario: {0}")]
    Invalid(String),
}

impl Scenario {
    pub fn from_json(text: &str) -> Result<Scenario, ScenarioError> {
        let mut s: Scenario =
            serde_json::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Values that must make sense on their own: canonical CIDRs, one owner per address,
    /// no duplicate route, tables within the quota, usable limits and credentials.
    fn validate_values(&self) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        let canonical = |what: String, net: &Ipv4Net| {
            if net.trunc() != *net {
                return bad(format!(
                    "{what}: {net} has host bits set (did you mean {}?)",
                    net.trunc()
                ));
            }
            Ok(())
        };
        if !(self.rate_limit_per_second.is_finite() && self.rate_limit_per_second > 0.0) {
            return bad(format!(
                "rate_limit_per_second must be a positive number, not {}",
                self.rate_limit_per_second
            ));
        }
        let mut secret_ids = std::collections::HashSet::new();
        for c in &self.credentials {
            if c.secret_id.is_empty() {
                return bad("credential with an empty secret_id".into());
            }
            if !secret_ids.insert(&c.secret_id) {
                return bad(format!("credential {}: duplicate secret_id", c.secret_id));
            }
            if c.secret_key.is_empty() {
                return bad(format!("credential {}: empty secret_key", c.secret_id));
            }
        }
        for v in &self.vpcs {
            canonical(format!("vpc {}", v.vpc_id), &v.cidr_block)?;
        }
        for (i, a) in self.subnets.iter().enumerate() {
            canonical(format!("subnet {}", a.subnet_id), &a.cidr_block)?;
            if let Some(b) = self.subnets[..i].iter().find(|b| {
                b.vpc_id == a.vpc_id
                    && (b.cidr_block.contains(&a.cidr_block.network())
                        || a.cidr_block.contains(&b.cidr_block.network()))
            }) {
                return bad(format!(
                    "subnet {}: {} overlaps subnet {} ({})",
                    a.subnet_id, a.cidr_block, b.subnet_id, b.cidr_block
                ));
            }
        }
        for (i, a) in self.instances.iter().enumerate() {
            if let Some(b) = self.instances[..i]
                .iter()
                .find(|b| b.private_ip == a.private_ip)
            {
                return bad(format!(
                    "instance {}: private_ip {} is already instance {}'s",
                    a.instance_id, a.private_ip, b.instance_id
                ));
            }
        }
        let mut route_ids = std::collections::HashSet::new();
        for t in &self.route_tables {
            let table = &t.route_table_id;
            // More routes than the quota is legal: a quota lowered below a table's usage
            // keeps the routes (only creates are refused), as on the real cloud.
            let vpc = self.vpcs.iter().find(|v| v.vpc_id == t.vpc_id);
            for (i, r) in t.routes.iter().enumerate() {
                let what = format!(
                    "route table {table}: route {} via {} {}",
                    r.destination_cidr_block, r.gateway_type, r.gateway_id
                );
                canonical(what.clone(), &r.destination_cidr_block)?;
                if r.route_id != 0 && !route_ids.insert(r.route_id) {
                    return bad(format!("{what}: duplicate route_id {}", r.route_id));
                }
                if t.routes[..i].iter().any(|o| {
                    o.destination_cidr_block == r.destination_cidr_block
                        && o.gateway_type == r.gateway_type
                        && o.gateway_id == r.gateway_id
                }) {
                    return bad(format!("{what}: duplicate route"));
                }
                if r.gateway_type == "NORMAL_CVM" {
                    let inside = r
                        .gateway_id
                        .parse::<Ipv4Addr>()
                        .ok()
                        .zip(vpc)
                        .is_some_and(|(ip, v)| v.cidr_block.contains(&ip));
                    if !inside {
                        return bad(format!(
                            "{what}: a NORMAL_CVM next hop must be an address inside {}",
                            vpc.map_or(t.vpc_id.clone(), |v| format!(
                                "{} ({})",
                                v.vpc_id, v.cidr_block
                            ))
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Cross-references must resolve and ids must be unique; subnets get their VPC's main
    /// table when none is named.
    pub fn validate(&mut self) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        let mut ids = std::collections::HashSet::new();
        for id in self
            .vpcs
            .iter()
            .map(|v| &v.vpc_id)
            .chain(self.route_tables.iter().map(|t| &t.route_table_id))
            .chain(self.subnets.iter().map(|s| &s.subnet_id))
            .chain(self.instances.iter().map(|i| &i.instance_id))
        {
            if !ids.insert(id.clone()) {
                return bad(format!("duplicate id {id}"));
            }
        }
        self.validate_values()?;
        for t in &self.route_tables {
            if !self.vpcs.iter().any(|v| v.vpc_id == t.vpc_id) {
                return bad(format!(
                    "route table {}: unknown vpc_id {}",
                    t.route_table_id, t.vpc_id
                ));
            }
        }
        for v in &self.vpcs {
            let mains = self
                .route_tables
                .iter()
                .filter(|t| t.vpc_id == v.vpc_id && t.main)
                .count();
            if mains != 1 {
                return bad(format!(
                    "vpc {}: needs exactly one main route table, has {mains}",
                    v.vpc_id
                ));
            }
        }
        for s in &mut self.subnets {
            let Some(vpc) = self.vpcs.iter().find(|v| v.vpc_id == s.vpc_id) else {
                return bad(format!(
                    "subnet {}: unknown vpc_id {}",
                    s.subnet_id, s.vpc_id
                ));
            };
            if !(vpc.cidr_block.contains(&s.cidr_block.network())
                && vpc.cidr_block.prefix_len() <= s.cidr_block.prefix_len())
            {
                return bad(format!(
                    "subnet {}: {} is outside {} ({})",
                    s.subnet_id, s.cidr_block, vpc.vpc_id, vpc.cidr_block
                ));
            }
            match &s.route_table_id {
                Some(rt) => {
                    if !self
                        .route_tables
                        .iter()
                        .any(|t| &t.route_table_id == rt && t.vpc_id == s.vpc_id)
                    {
                        return bad(format!(
                            "subnet {}: route table {rt} is not in {}",
                            s.subnet_id, s.vpc_id
                        ));
                    }
                }
                None => {
                    s.route_table_id = self
                        .route_tables
                        .iter()
                        .find(|t| t.vpc_id == s.vpc_id && t.main)
                        .map(|t| t.route_table_id.clone());
                }
            }
        }
        for i in &self.instances {
            let Some(s) = self.subnets.iter().find(|s| s.subnet_id == i.subnet_id) else {
                return bad(format!(
                    "instance {}: unknown subnet_id {}",
                    i.instance_id, i.subnet_id
                ));
            };
            if !s.cidr_block.contains(&i.private_ip) {
                return bad(format!(
                    "instance {}: {} is outside subnet {} ({})",
                    i.instance_id, i.private_ip, s.subnet_id, s.cidr_block
                ));
            }
        }
        if self.route_quota == 0 {
            return bad("route_quota must be at least 1".into());
        }
        // Give pre-existing routes ids.
        let mut next = self.next_route_id.max(
            self.route_tables
                .iter()
                .flat_map(|t| &t.routes)
                .map(|r| r.route_id)
                .max()
                .unwrap_or(0)
                + 1,
        );
        for t in &mut self.route_tables {
            for r in &mut t.routes {
                if r.route_id == 0 {
                    r.route_id = next;
                    next += 1;
                }
                if r.route_item_id.is_empty() {
                    r.route_item_id = format!("rti-{:08x}", r.route_id);
                }
            }
        }
        self.next_route_id = next;
        Ok(())
    }
}
