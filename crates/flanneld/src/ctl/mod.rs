//! flannelctl's library side, on either store: the leases with admission's verdict on each
//! ([`LeaseReport`]), renderers, and in `routes` the tencent-vpc operations (plan, garbage
//! collection, uninstall, preflight). The binary only parses flags and prints. The cloud
//! client comes from [`crate::cloud`], shared with the tencent-vpc backend.

pub mod commands;
pub mod routes;

use crate::subnet::{SubnetError, SubnetManager};
use flannel_core::admission::{evaluate, Rules, Verdict};
use flannel_core::lease::{Lease, SubnetKey};
use std::collections::BTreeMap;
use std::fmt::Write;
use tencent_cloud::vpc::RouteTable;

/// Route tables as a human-readable table, one block per route table.
pub fn render_route_tables(tables: &[RouteTable]) -> String {
    let mut out = String::new();
    for t in tables {
        let subnets: Vec<&str> = t
            .associations()
            .iter()
            .filter_map(|a| a.subnet_id.as_deref())
            .collect();
        let _ = writeln!(
            out,
            "{}{}  {}  subnets: {}  routes: {}",
            t.id(),
            if t.main == Some(true) { " (main)" } else { "" },
            t.route_table_name.as_deref().unwrap_or("-"),
            if subnets.is_empty() {
                "-".to_string()
            } else {
                subnets.join(",")
            },
            t.routes().len()
        );
        let _ = writeln!(
            out,
            "  {:<9} {:<20} {:<14} {:<16} {:<8} {:<6} DESCRIPTION",
            "ROUTE-ID", "DESTINATION", "GATEWAY-TYPE", "GATEWAY", "ENABLED", "TYPE"
        );
        for r in t.routes() {
            let _ = writeln!(
                out,
                "  {:<9} {:<20} {:<14} {:<16} {:<8} {:<6} {}",
                r.route_id.map_or("-".to_string(), |i| i.to_string()),
                r.destination_cidr_block
                    .as_deref()
                    .or(r.destination_ipv6_cidr_block.as_deref())
                    .unwrap_or("-"),
                r.gateway_type.as_deref().unwrap_or("-"),
                r.gateway_id.as_deref().unwrap_or("-"),
                r.enabled.map_or("-", |e| if e { "yes" } else { "no" }),
                r.route_type.as_deref().unwrap_or("-"),
                r.route_description.as_deref().unwrap_or(""),
            );
        }
    }
    out
}

/// The leases of a store with admission's verdict on each (as a node would decide it).
#[derive(Debug, Clone)]
pub struct LeaseReport {
    pub leases: Vec<Lease>,
    pub verdicts: BTreeMap<SubnetKey, Verdict>,
}

impl LeaseReport {
    /// Read every lease of `store` and decide on each as flanneld does.
    pub async fn read(store: &dyn SubnetManager) -> Result<LeaseReport, SubnetError> {
        let config = store.network_config().await?;
        let mut leases = store.list_leases().await?;
        leases.sort_by_key(|l| l.key);
        let verdicts = evaluate(&Rules::new(&config, store.allocation()), None, &leases);
        Ok(LeaseReport { leases, verdicts })
    }

    /// "used", "not used" (no part in an enabled family), or "refused: why".
    pub fn status(&self, l: &Lease) -> String {
        match self.verdicts.get(&l.key) {
            Some(v) if v.used() => match v.refusal() {
                Some(r) => format!("used in part; refused: {r}"),
                None => "used".into(),
            },
            Some(v) => match v.refusal() {
                Some(r) => format!("refused: {r}"),
                None => "not used (no subnet of an enabled family)".into(),
            },
            None => "?".into(),
        }
    }

    /// Leases as a table: subnet, public IP, backend, time left, reservation, and whether
    /// admission lets nodes use it.
    pub fn render(&self, now: std::time::SystemTime) -> String {
        use flannel_core::lease::Expiry;
        let mut out = format!(
            "{:<36} {:<16} {:<12} {:<12} {:<9} {}\n",
            "SUBNET", "PUBLIC-IP", "BACKEND", "EXPIRES-IN", "RESERVED", "STATUS"
        );
        for l in &self.leases {
            let expires = match l.expiry {
                Expiry::Never => "never".to_string(),
                Expiry::Node => "with node".to_string(),
                Expiry::Unknown => "?".to_string(),
                Expiry::At(t) => {
                    let s = t.duration_since(now).map_or(0, |d| d.as_secs());
                    format!("{}h{:02}m{:02}s", s / 3600, s % 3600 / 60, s % 60)
                }
            };
            let backend = if l.attrs.backend_type.is_empty() {
                "-"
            } else {
                l.attrs.backend_type.as_str()
            };
            // Subnets as CIDRs (the key's `-` form is etcd's, not an operator's).
            let subnet = match l.ipv6_subnet() {
                Some(v6) => format!("{},{v6}", l.key.ipv4),
                None => l.key.ipv4.to_string(),
            };
            let _ = writeln!(
                out,
                "{:<36} {:<16} {:<12} {:<12} {:<9} {}",
                subnet,
                l.attrs.public_ip.to_string(),
                backend,
                expires,
                if l.is_reservation() { "yes" } else { "no" },
                self.status(l)
            );
        }
        out
    }

    /// Leases as JSON objects (`Refused`: the rule a refused lease broke, else null).
    pub fn json(&self) -> serde_json::Value {
        use flannel_core::lease::Expiry;
        serde_json::Value::Array(
            self.leases
                .iter()
                .map(|l| {
                    let expiry = match l.expiry {
                        Expiry::At(t) => serde_json::json!(t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())),
                        _ => serde_json::Value::Null,
                    };
                    let verdict = self.verdicts.get(&l.key);
                    let refused = verdict.and_then(|v| v.refusal()).map(|r| {
                        serde_json::json!({"Reason": r.reason.label(), "Detail": r.detail})
                    });
                    serde_json::json!({
                        "Subnet": l.subnet().map(|s| s.to_string()),
                        "IPv6Subnet": l.ipv6_subnet().map(|s| s.to_string()),
                        "Key": l.key.to_string(),
                        "Attrs": serde_json::from_str::<serde_json::Value>(&l.attrs.to_json()).unwrap_or_default(),
                        "ExpiresAt": expiry,
                        "Reservation": l.is_reservation(),
                        "Used": verdict.is_some_and(Verdict::used),
                        "Refused": refused,
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_tables_and_routes() {
        let t: RouteTable = serde_json::from_str(
            r#"{"RouteTableId":"rtb-1","RouteTableName":"default","Main":true,"AssociationSet":[{"SubnetId":"subnet-a"}],
                "RouteSet":[{"RouteId":7,"DestinationCidrBlock":"10.244.1.0/24","GatewayType":"NORMAL_CVM","GatewayId":"172.16.0.7","Enabled":true,"RouteType":"USER","RouteDescription":"flannel-rs"}]}"#,
        )
        .unwrap();
        let out = render_route_tables(&[t]);
        assert!(
            out.starts_with("rtb-1 (main)  default  subnets: subnet-a  routes: 1\n"),
            "{out}"
        );
        assert!(out.contains("  7         10.244.1.0/24        NORMAL_CVM     172.16.0.7       yes      USER   flannel-rs\n"), "{out}");
    }
}
