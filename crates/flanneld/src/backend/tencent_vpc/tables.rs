//! Which route tables to program, and what they hold, from one DescribeRouteTables of the
//! VPC (a VPC has at most 10 tables: one page). Discovery is pure: a node subnet is served
//! by the table whose associations list it, else by the VPC's main table.

use super::plan::{ActualRoute, TableState};
use std::collections::BTreeSet;
use tencent_cloud::vpc::RouteTable;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("VPC {0} has no route tables (is the VpcId right, in this region?)")]
    NoTables(String),
    #[error("VPC {0} has no main route table to serve subnets without an association")]
    NoMainTable(String),
    #[error("route table {table} (Backend.RouteTableIds) is not in VPC {vpc}")]
    UnknownTable { table: String, vpc: String },
}

/// The tables to program and the node subnets none of them serves (configured tables only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub tables: Vec<String>,
    pub unserved: Vec<String>,
}

/// The table serving `subnet`: its association, else the main table.
fn serving<'a>(tables: &'a [RouteTable], subnet: &str) -> Option<&'a str> {
    tables
        .iter()
        .find(|t| {
            t.associations()
                .iter()
                .any(|a| a.subnet_id.as_deref() == Some(subnet))
        })
        .or_else(|| tables.iter().find(|t| t.main == Some(true)))
        .map(RouteTable::id)
}

/// Pick the tables: `configured` when given (reporting node subnets they do not serve),
/// otherwise the distinct tables serving `node_subnets` (the main table when there are none
/// yet, so a first node's route is in place for the next).
pub fn select(
    vpc: &str,
    tables: &[RouteTable],
    configured: &[String],
    node_subnets: &BTreeSet<String>,
) -> Result<Selection, DiscoveryError> {
    if tables.is_empty() {
        return Err(DiscoveryError::NoTables(vpc.to_string()));
    }
    if !configured.is_empty() {
        for c in configured {
            if !tables.iter().any(|t| t.id() == c) {
                return Err(DiscoveryError::UnknownTable {
                    table: c.clone(),
                    vpc: vpc.to_string(),
                });
            }
        }
        let unserved = node_subnets
            .iter()
            .filter(|s| serving(tables, s).is_none_or(|t| !configured.iter().any(|c| c == t)))
            .cloned()
            .collect();
        return Ok(Selection {
            tables: configured.to_vec(),
            unserved,
        });
    }
    let mut out: Vec<String> = Vec::new();
    for s in node_subnets {
        let t = serving(tables, s).ok_or_else(|| DiscoveryError::NoMainTable(vpc.to_string()))?;
        if !out.iter().any(|o| o == t) {
            out.push(t.to_string());
        }
    }
    if out.is_empty() {
        let main = tables
            .iter()
            .find(|t| t.main == Some(true))
            .ok_or_else(|| DiscoveryError::NoMainTable(vpc.to_string()))?;
        out.push(main.id().to_string());
    }
    out.sort();
    Ok(Selection {
        tables: out,
        unserved: Vec::new(),
    })
}

/// A described table as the planner sees it, with its route limit.
pub fn table_state(t: &RouteTable, limit: usize) -> TableState {
    TableState {
        id: t.id().to_string(),
        limit,
        routes: t
            .routes()
            .iter()
            .map(|r| ActualRoute {
                route_id: r.route_id.unwrap_or_default(),
                dest: r
                    .destination_cidr_block
                    .as_deref()
                    .and_then(|d| d.parse().ok()),
                gateway_type: r.gateway_type.clone().unwrap_or_default(),
                gateway_id: r.gateway_id.clone().unwrap_or_default(),
                description: r.route_description.clone().unwrap_or_default(),
                enabled: r.enabled.unwrap_or(true),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables() -> Vec<RouteTable> {
        serde_json::from_str(
            r#"[{"RouteTableId":"rtb-main","Main":true,"AssociationSet":[{"SubnetId":"subnet-a"}]},
                {"RouteTableId":"rtb-b","Main":false,"AssociationSet":[{"SubnetId":"subnet-b"}]},
                {"RouteTableId":"rtb-idle","Main":false,"AssociationSet":[]}]"#,
        )
        .unwrap()
    }

    fn subnets(s: &[&str]) -> BTreeSet<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn discovered_tables_are_those_serving_node_subnets() {
        let t = tables();
        let sel = select("vpc-1", &t, &[], &subnets(&["subnet-a", "subnet-b"])).unwrap();
        assert_eq!(sel.tables, vec!["rtb-b", "rtb-main"]);
        // A subnet without an association is served by the main table.
        let sel = select("vpc-1", &t, &[], &subnets(&["subnet-new"])).unwrap();
        assert_eq!(sel.tables, vec!["rtb-main"]);
        // No node subnet known yet: the main table.
        assert_eq!(
            select("vpc-1", &t, &[], &subnets(&[])).unwrap().tables,
            vec!["rtb-main"]
        );
    }

    #[test]
    fn configured_tables_report_what_they_do_not_serve() {
        let t = tables();
        let sel = select(
            "vpc-1",
            &t,
            &["rtb-b".to_string()],
            &subnets(&["subnet-a", "subnet-b"]),
        )
        .unwrap();
        assert_eq!(sel.tables, vec!["rtb-b"]);
        assert_eq!(sel.unserved, vec!["subnet-a"]);
        let e = select("vpc-1", &t, &["rtb-zzz".to_string()], &subnets(&[])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "route table rtb-zzz (Backend.RouteTableIds) is not in VPC vpc-1"
        );
    }

    #[test]
    fn a_failed_discovery_is_an_error_not_the_main_table() {
        assert_eq!(
            select("vpc-9", &[], &[], &subnets(&["subnet-a"]))
                .unwrap_err()
                .to_string(),
            "VPC vpc-9 has no route tables (is the VpcId right, in this region?)"
        );
        let no_main: Vec<RouteTable> =
            serde_json::from_str(r#"[{"RouteTableId":"rtb-b","Main":false}]"#).unwrap();
        assert!(matches!(
            select("vpc-1", &no_main, &[], &subnets(&["subnet-a"])),
            Err(DiscoveryError::NoMainTable(_))
        ));
    }
}
