//! The read-only actions: DescribeVpcs, DescribeRouteTables, DescribeSubnets,
//! DescribeVpcLimits, DescribeInstances.

use super::render::table_json;
use super::request::{check_filters, filter_match, page, Req};
use super::{err, OpResult};
use crate::scenario::Scenario;
use serde_json::{json, Map, Value};

pub fn describe_route_tables(s: &Scenario, req: &Map<String, Value>) -> OpResult {
    let r = Req(req);
    r.only(&[
        "RouteTableIds",
        "Filters",
        "Offset",
        "Limit",
        "NeedRouterInfo",
    ])?;
    let ids = r.strings_opt("RouteTableIds")?;
    let filters = r.filters()?;
    if ids.is_some() && r.has("Filters") {
        return Err(err(
            "InvalidParameter.Coexist",
            "`RouteTableIds` and `Filters` cannot be specified together.",
        ));
    }
    check_filters(
        &filters,
        &[
            "route-table-id",
            "route-table-name",
            "vpc-id",
            "association.main",
            "tag-key",
            "next-hop-type",
        ],
    )?;
    let (offset, limit) = r.paging(true)?;
    let tables: Vec<Value> = s
        .route_tables
        .iter()
        .filter(|t| {
            ids.as_ref()
                .is_none_or(|ids| ids.contains(&t.route_table_id.as_str()))
        })
        .filter(|t| {
            // Multi-valued fields (a table has many routes and tags) match when any value does.
            filters.iter().all(|(name, values)| {
                let any = |mut found: Box<dyn Iterator<Item = &str> + '_>| {
                    found.any(|f| values.iter().any(|v| v.eq_ignore_ascii_case(f)))
                };
                match *name {
                    "next-hop-type" => {
                        any(Box::new(t.routes.iter().map(|r| r.gateway_type.as_str())))
                    }
                    "tag-key" => any(Box::new(t.tags.keys().map(String::as_str))),
                    _ => filter_match(&[(name, values.clone())], |n| match n {
                        "route-table-id" => Some(t.route_table_id.clone()),
                        "route-table-name" => Some(t.name.clone()),
                        "vpc-id" => Some(t.vpc_id.clone()),
                        "association.main" => Some(t.main.to_string()),
                        _ => None,
                    }),
                }
            })
        })
        .map(|t| table_json(s, t, None))
        .collect();
    if let Some(ids) = &ids {
        if let Some(missing) = ids
            .iter()
            .find(|id| !s.route_tables.iter().any(|t| t.route_table_id == **id))
        {
            return Err(err(
                "ResourceNotFound",
                format!("The route table `{missing}` does not exist."),
            ));
        }
    }
    let (total, set) = page(tables, offset, limit);
    Ok(json!({"TotalCount": total, "RouteTableSet": set}))
}

pub fn describe_subnets(s: &Scenario, req: &Map<String, Value>) -> OpResult {
    let r = Req(req);
    r.only(&["SubnetIds", "Filters", "Offset", "Limit"])?;
    let ids = r.strings_opt("SubnetIds")?;
    let filters = r.filters()?;
    if ids.is_some() && r.has("Filters") {
        return Err(err(
            "InvalidParameter.Coexist",
            "`SubnetIds` and `Filters` cannot be specified together.",
        ));
    }
    check_filters(
        &filters,
        &[
            "subnet-id",
            "vpc-id",
            "cidr-block",
            "is-default",
            "subnet-name",
            "zone",
            "route-table-id",
        ],
    )?;
    let (offset, limit) = r.paging(true)?;
    let subnets: Vec<Value> = s
        .subnets
        .iter()
        .filter(|sn| {
            ids.as_ref()
                .is_none_or(|ids| ids.contains(&sn.subnet_id.as_str()))
        })
        .filter(|sn| {
            filter_match(&filters, |name| match name {
                "subnet-id" => Some(sn.subnet_id.clone()),
                "vpc-id" => Some(sn.vpc_id.clone()),
                "cidr-block" => Some(sn.cidr_block.to_string()),
                "is-default" => Some("false".into()),
                "subnet-name" => Some(sn.name.clone()),
                "zone" => Some(sn.zone.clone()),
                "route-table-id" => sn.route_table_id.clone(),
                _ => None,
            })
        })
        .map(|sn| {
            let used = s
                .instances
                .iter()
                .filter(|i| i.subnet_id == sn.subnet_id)
                .count() as u64;
            let size = 1u64 << (32 - u32::from(sn.cidr_block.prefix_len()));
            json!({
                "VpcId": sn.vpc_id,
                "SubnetId": sn.subnet_id,
                "SubnetName": sn.name,
                "CidrBlock": sn.cidr_block.to_string(),
                "IsDefault": false,
                "EnableBroadcast": false,
                "Zone": sn.zone,
                "RouteTableId": sn.route_table_id,
                "CreatedTime": "2020-01-01 00:00:00",
                "AvailableIpAddressCount": size.saturating_sub(3 + used),
                "Ipv6CidrBlock": "",
                "NetworkAclId": "",
                "IsRemoteVpcSnat": false,
                "TotalIpAddressCount": size,
                "TagSet": [],
            })
        })
        .collect();
    let (total, set) = page(subnets, offset, limit);
    Ok(json!({"TotalCount": total, "SubnetSet": set}))
}

pub fn describe_instances(s: &Scenario, req: &Map<String, Value>) -> OpResult {
    let r = Req(req);
    r.only(&["InstanceIds", "Filters", "Offset", "Limit"])?;
    let ids = r.strings_opt("InstanceIds")?;
    let filters = r.filters()?;
    if ids.is_some() && r.has("Filters") {
        return Err(err(
            "InvalidParameterValue",
            "`InstanceIds` and `Filters` cannot be specified together.",
        ));
    }
    check_filters(
        &filters,
        &[
            "private-ip-address",
            "instance-id",
            "vpc-id",
            "instance-name",
            "zone",
        ],
    )?;
    let (offset, limit) = r.paging(false)?;
    let found: Vec<Value> = s
        .instances
        .iter()
        .filter(|i| ids.as_ref().is_none_or(|ids| ids.contains(&i.instance_id.as_str())))
        .filter_map(|i| {
            let sn = s.subnets.iter().find(|sn| sn.subnet_id == i.subnet_id)?;
            filter_match(&filters, |name| match name {
                "private-ip-address" => Some(i.private_ip.to_string()),
                "instance-id" => Some(i.instance_id.clone()),
                "vpc-id" => Some(sn.vpc_id.clone()),
                "instance-name" => Some(i.name.clone()),
                "zone" => Some(sn.zone.clone()),
                _ => None,
            })
            .then(|| {
                json!({
                    "InstanceId": i.instance_id,
                    "InstanceName": i.name,
                    "InstanceState": "RUNNING",
                    "PrivateIpAddresses": [i.private_ip.to_string()],
                    "VirtualPrivateCloud": {"VpcId": sn.vpc_id, "SubnetId": sn.subnet_id, "AsVpcGateway": false},
                    "Placement": {"Zone": sn.zone},
                })
            })
        })
        .collect();
    let (total, set) = page(found, offset, limit);
    Ok(json!({"TotalCount": total, "InstanceSet": set}))
}

/// The quota types served (the account's limits as the scenario sets them).
const LIMIT_TYPES: &[&str] = &["route-table-max-policies", "vpc-max-route-tables"];

/// DescribeVpcLimits: `LimitTypes` in, `VpcLimitSet[{LimitType, LimitValue}]` out. The
/// routes-per-table limit is the scenario's `route_quota`; a VPC holds at most 10 tables.
pub fn describe_vpc_limits(s: &Scenario, req: &Map<String, Value>) -> OpResult {
    let r = Req(req);
    r.only(&["LimitTypes"])?;
    let Some(types) = r.strings_opt("LimitTypes")? else {
        return Err(err(
            "MissingParameter",
            "The request is missing a required parameter `LimitTypes`.",
        ));
    };
    let mut set = Vec::new();
    for t in types {
        let value = match t {
            "route-table-max-policies" => s.route_quota as u64,
            "vpc-max-route-tables" => 10,
            other => {
                return Err(err(
                    "InvalidParameterValue",
                    format!("The limit type `{other}` is not one of {LIMIT_TYPES:?}."),
                ))
            }
        };
        set.push(json!({"LimitType": t, "LimitValue": value}));
    }
    Ok(json!({"VpcLimitSet": set}))
}

/// DescribeVpcs: `VpcIds` or `Filters` (vpc-id, cidr-block), paged with string Offset/Limit.
pub fn describe_vpcs(s: &Scenario, req: &Map<String, Value>) -> OpResult {
    let r = Req(req);
    r.only(&["VpcIds", "Filters", "Offset", "Limit"])?;
    let ids = r.strings_opt("VpcIds")?;
    let filters = r.filters()?;
    if ids.is_some() && r.has("Filters") {
        return Err(err(
            "InvalidParameter.Coexist",
            "`VpcIds` and `Filters` cannot be specified together.",
        ));
    }
    check_filters(&filters, &["vpc-id", "cidr-block"])?;
    let (offset, limit) = r.paging(true)?;
    let vpcs: Vec<Value> = s
        .vpcs
        .iter()
        .filter(|v| {
            ids.as_ref()
                .is_none_or(|ids| ids.contains(&v.vpc_id.as_str()))
        })
        .filter(|v| {
            filter_match(&filters, |name| match name {
                "vpc-id" => Some(v.vpc_id.clone()),
                "cidr-block" => Some(v.cidr_block.to_string()),
                _ => None,
            })
        })
        .map(|v| {
            json!({
                "VpcId": v.vpc_id,
                "VpcName": v.vpc_id,
                "CidrBlock": v.cidr_block.to_string(),
                "IsDefault": false,
                "EnableMulticast": false,
                "CreatedTime": "2020-01-01 00:00:00",
                "AssistantCidrSet": [],
                "TagSet": [],
            })
        })
        .collect();
    let (total, set) = page(vpcs, offset, limit);
    Ok(json!({"TotalCount": total, "VpcSet": set}))
}
