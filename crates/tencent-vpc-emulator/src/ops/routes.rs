//! The route mutations: CreateRoutes, DeleteRoutes, ReplaceRoutes, EnableRoutes and
//! DisableRoutes, each all-or-nothing with the documented errors.

use super::render::{route_json, table_json};
use super::request::Req;
use super::{created_time, err, ApiErr, OpResult};
use crate::scenario::{RouteSpec, RouteTableSpec, Scenario};
use ipnet::Ipv4Net;
use serde_json::{json, Map, Value};
use std::net::Ipv4Addr;

const GATEWAY_TYPES: &[&str] = &[
    "CVM",
    "VPN",
    "DIRECTCONNECT",
    "PEERCONNECTION",
    "HAVIP",
    "NAT",
    "NORMAL_CVM",
    "EIP",
    "LOCAL_GATEWAY",
    "INTRANAT",
    "USER_CCN",
    "GWLB_ENDPOINT",
];
/// ECMP: at most this many routes of one type to one destination.
const ECMP_MAX: usize = 8;

fn table_index(s: &Scenario, id: &str) -> Result<usize, ApiErr> {
    s.route_tables
        .iter()
        .position(|t| t.route_table_id == id)
        .ok_or_else(|| {
            err(
                "ResourceNotFound",
                format!("The route table `{id}` does not exist."),
            )
        })
}

/// A new route's fields, validated against the table's VPC.
struct NewRoute {
    dest: Ipv4Net,
    gateway_type: String,
    gateway_id: String,
    description: String,
}

fn parse_new_route(
    s: &Scenario,
    table: &RouteTableSpec,
    v: &Value,
    with_id: bool,
) -> Result<(Option<u64>, NewRoute), ApiErr> {
    let o = v
        .as_object()
        .ok_or_else(|| err("InvalidParameter", "Each of `Routes` must be an object."))?;
    let r = Req(o);
    let mut allowed = vec![
        "DestinationCidrBlock",
        "GatewayType",
        "GatewayId",
        "RouteDescription",
    ];
    if with_id {
        allowed.extend(["RouteId", "RouteItemId"]);
    }
    r.only(&allowed)?;
    let route_id = if with_id {
        match o.get("RouteId") {
            Some(Value::Number(n)) => Some(n.as_u64().ok_or_else(|| {
                err(
                    "InvalidParameterValue.Malformed",
                    "`RouteId` must be a positive integer.",
                )
            })?),
            None | Some(Value::Null) => None,
            Some(_) => {
                return Err(err(
                    "InvalidParameter",
                    "The value type of parameter `RouteId` should be integer.",
                ))
            }
        }
    } else {
        None
    };
    let dest_s = r.str_req("DestinationCidrBlock")?;
    let dest: Ipv4Net = dest_s
        .parse()
        .ok()
        .filter(|n: &Ipv4Net| n.trunc() == *n)
        .ok_or_else(|| {
            err(
                "InvalidParameterValue.Malformed",
                format!("`DestinationCidrBlock` {dest_s:?} is not a valid IPv4 CIDR."),
            )
        })?;
    let gateway_type = r.str_req("GatewayType")?;
    if !GATEWAY_TYPES.contains(&gateway_type) {
        return Err(err(
            "InvalidParameterValue",
            format!("`GatewayType` {gateway_type:?} is not supported."),
        ));
    }
    let gateway_id = r.str_req("GatewayId")?;
    let Some(vpc) = s.vpcs.iter().find(|v| v.vpc_id == table.vpc_id) else {
        return Err(err(
            "InternalError",
            format!(
                "Route table {} belongs to an unknown VPC.",
                table.route_table_id
            ),
        ));
    };
    // Destinations inside the VPC CIDR are the VPC's own (local) routes; a wider destination
    // such as 0.0.0.0/0 towards a NAT gateway is the usual egress route and is accepted.
    if vpc.cidr_block.contains(&dest.network()) && dest.prefix_len() >= vpc.cidr_block.prefix_len()
    {
        return Err(err(
            "InvalidParameterValue.VpcCidrConflict",
            format!(
                "The destination {dest} conflicts with the CIDR {} of {}.",
                vpc.cidr_block, vpc.vpc_id
            ),
        ));
    }
    if gateway_type == "NORMAL_CVM" {
        let ok = gateway_id.parse::<Ipv4Addr>().ok().is_some_and(|ip| {
            s.instances.iter().any(|i| {
                i.private_ip == ip
                    && s.subnets
                        .iter()
                        .any(|sn| sn.subnet_id == i.subnet_id && sn.vpc_id == table.vpc_id)
            })
        });
        if !ok {
            return Err(err(
                "InvalidParameterValue.RouteNextHopInvalid",
                format!(
                    "The next hop {gateway_id:?} is not the private IP of a CVM in {}.",
                    table.vpc_id
                ),
            ));
        }
    }
    let description = r
        .str_opt("RouteDescription")?
        .unwrap_or_default()
        .to_string();
    if description.chars().count() > 100 {
        return Err(err(
            "InvalidParameterValue.Malformed",
            "`RouteDescription` is longer than 100 characters.",
        ));
    }
    Ok((
        route_id,
        NewRoute {
            dest,
            gateway_type: gateway_type.to_string(),
            gateway_id: gateway_id.to_string(),
            description,
        },
    ))
}

/// Same destination: identical next hop is a duplicate; a different type cannot form ECMP.
fn check_conflicts<'r>(
    existing: impl Iterator<Item = &'r RouteSpec> + Clone,
    n: &NewRoute,
) -> Result<(), ApiErr> {
    let same_dest: Vec<&RouteSpec> = existing
        .filter(|r| r.destination_cidr_block == n.dest)
        .collect();
    if same_dest
        .iter()
        .any(|r| r.gateway_type == n.gateway_type && r.gateway_id == n.gateway_id)
    {
        return Err(err(
            "InvalidParameterValue.Duplicate",
            format!("The route {} via {} already exists.", n.dest, n.gateway_id),
        ));
    }
    if same_dest.iter().any(|r| r.gateway_type != n.gateway_type) {
        return Err(err(
            "UnsupportedOperation.EcmpWithUserRoute",
            format!("{} already has a route of another next-hop type.", n.dest),
        ));
    }
    if same_dest.len() >= ECMP_MAX {
        return Err(err(
            "UnsupportedOperation.Ecmp",
            format!("{} already has {ECMP_MAX} equal-cost routes.", n.dest),
        ));
    }
    Ok(())
}

fn routes_array<'a>(r: &Req<'a>) -> Result<&'a Vec<Value>, ApiErr> {
    let a = r.array_opt("Routes")?.ok_or_else(|| {
        err(
            "MissingParameter",
            "The request is missing a required parameter `Routes`.",
        )
    })?;
    if a.is_empty() {
        return Err(err("InvalidParameterValue", "`Routes` must not be empty."));
    }
    if a.len() > 100 {
        return Err(err(
            "InvalidParameterValue.LimitExceeded",
            "At most 100 routes per request.",
        ));
    }
    Ok(a)
}

pub fn create_routes(s: &mut Scenario, req: &Map<String, Value>, now: i64) -> OpResult {
    let r = Req(req);
    r.only(&["RouteTableId", "Routes"])?;
    let ti = table_index(s, r.str_req("RouteTableId")?)?;
    let routes = routes_array(&r)?;
    // Validate everything first: the call is all or nothing.
    let mut new: Vec<NewRoute> = Vec::new();
    for v in routes {
        let (_, n) = parse_new_route(s, &s.route_tables[ti], v, false)?;
        let pending: Vec<RouteSpec> = new.iter().map(|p| spec(p, 0, now)).collect();
        check_conflicts(s.route_tables[ti].routes.iter().chain(pending.iter()), &n)?;
        new.push(n);
    }
    let table = &s.route_tables[ti];
    if table.routes.len() + new.len() > s.route_quota {
        return Err(err(
            "LimitExceeded",
            format!(
                "Route table {} has {}/{} routes; {} more do not fit.",
                table.route_table_id,
                table.routes.len(),
                s.route_quota,
                new.len()
            ),
        ));
    }
    let mut created = Vec::new();
    for n in new {
        let id = s.next_route_id;
        s.next_route_id += 1;
        let rs = spec(&n, id, now);
        created.push(rs.clone());
        s.route_tables[ti].routes.push(rs);
    }
    let t = &s.route_tables[ti];
    Ok(json!({"TotalCount": 1, "RouteTableSet": [table_json(s, t, Some(&created))]}))
}

fn spec(n: &NewRoute, id: u64, now: i64) -> RouteSpec {
    RouteSpec {
        route_id: id,
        route_item_id: format!("rti-{id:08x}"),
        destination_cidr_block: n.dest,
        gateway_type: n.gateway_type.clone(),
        gateway_id: n.gateway_id.clone(),
        route_description: n.description.clone(),
        enabled: true,
        route_type: "USER".into(),
        created_time: created_time(now),
    }
}

fn route_ids(r: &Req<'_>, field: &str) -> Result<Vec<u64>, ApiErr> {
    let a = r.array_opt(field)?.ok_or_else(|| {
        err(
            "MissingParameter",
            format!("The request is missing a required parameter `{field}`."),
        )
    })?;
    a.iter()
        .map(|v| {
            v.as_u64().ok_or_else(|| {
                err(
                    "InvalidParameter",
                    format!("`{field}` must be an array of integers."),
                )
            })
        })
        .collect()
}

pub fn delete_routes(s: &mut Scenario, req: &Map<String, Value>) -> OpResult {
    let r = Req(req);
    r.only(&["RouteTableId", "Routes"])?;
    let ti = table_index(s, r.str_req("RouteTableId")?)?;
    let mut ids = Vec::new();
    for v in routes_array(&r)? {
        let o = v
            .as_object()
            .ok_or_else(|| err("InvalidParameter", "Each of `Routes` must be an object."))?;
        let rr = Req(o);
        rr.only(&[
            "RouteId",
            "RouteItemId",
            "DestinationCidrBlock",
            "GatewayType",
            "GatewayId",
            "RouteDescription",
        ])?;
        let t = &s.route_tables[ti];
        let found = match (o.get("RouteId"), rr.str_opt("RouteItemId")?) {
            (Some(Value::Number(n)), _) => t.routes.iter().find(|x| Some(x.route_id) == n.as_u64()),
            (Some(_), _) => {
                return Err(err(
                    "InvalidParameter",
                    "The value type of parameter `RouteId` should be integer.",
                ))
            }
            (None, Some(item)) => t.routes.iter().find(|x| x.route_item_id == item),
            (None, None) => {
                return Err(err(
                    "MissingParameter",
                    "Each route needs `RouteId` or `RouteItemId`.",
                ))
            }
        };
        let Some(found) = found else {
            return Err(err(
                "ResourceNotFound",
                format!("A route in {} does not exist.", t.route_table_id),
            ));
        };
        if found.route_type != "USER" {
            return Err(err(
                "UnsupportedOperation.SystemRoute",
                format!("Route {} is a system route.", found.route_id),
            ));
        }
        ids.push(found.route_id);
    }
    let t = &mut s.route_tables[ti];
    let (gone, kept): (Vec<RouteSpec>, Vec<RouteSpec>) = std::mem::take(&mut t.routes)
        .into_iter()
        .partition(|x| ids.contains(&x.route_id));
    t.routes = kept;
    let id = t.route_table_id.clone();
    Ok(json!({"RouteSet": gone.iter().map(|x| route_json(x, &id)).collect::<Vec<_>>()}))
}

pub fn replace_routes(s: &mut Scenario, req: &Map<String, Value>) -> OpResult {
    let r = Req(req);
    r.only(&["RouteTableId", "Routes"])?;
    let ti = table_index(s, r.str_req("RouteTableId")?)?;
    let mut changes = Vec::new();
    for v in routes_array(&r)? {
        let (id, n) = parse_new_route(s, &s.route_tables[ti], v, true)?;
        let id = id.ok_or_else(|| err("MissingParameter", "Each route needs `RouteId`."))?;
        let t = &s.route_tables[ti];
        let Some(old) = t.routes.iter().find(|x| x.route_id == id) else {
            return Err(err(
                "UnsupportedOperation.RecordNotExists",
                format!("Route {id} does not exist in {}.", t.route_table_id),
            ));
        };
        if old.route_type != "USER" {
            return Err(err(
                "UnsupportedOperation.SystemRoute",
                format!("Route {id} is a system route."),
            ));
        }
        check_conflicts(t.routes.iter().filter(|x| x.route_id != id), &n)?;
        changes.push((id, n));
    }
    let t = &mut s.route_tables[ti];
    let (mut old_set, mut new_set) = (Vec::new(), Vec::new());
    for (id, n) in changes {
        let route = t
            .routes
            .iter_mut()
            .find(|x| x.route_id == id)
            .expect("checked above");
        old_set.push(route_json(route, &t.route_table_id));
        route.destination_cidr_block = n.dest;
        route.gateway_type = n.gateway_type;
        route.gateway_id = n.gateway_id;
        route.route_description = n.description;
        new_set.push(route_json(route, &t.route_table_id));
    }
    Ok(json!({"OldRouteSet": old_set, "NewRouteSet": new_set}))
}

pub fn toggle_routes(s: &mut Scenario, req: &Map<String, Value>, enable: bool) -> OpResult {
    let r = Req(req);
    r.only(&["RouteTableId", "RouteIds", "RouteItemIds"])?;
    let ti = table_index(s, r.str_req("RouteTableId")?)?;
    let routes = &s.route_tables[ti].routes;
    let find = |matches: &dyn Fn(&RouteSpec) -> bool, id: &dyn std::fmt::Display| {
        routes
            .iter()
            .position(matches)
            .ok_or_else(|| err("ResourceNotFound", format!("Route {id} does not exist.")))
    };
    let targets: Vec<usize> = match (r.has("RouteIds"), r.has("RouteItemIds")) {
        (true, true) => {
            return Err(err(
                "InvalidParameter.Coexist",
                "`RouteIds` and `RouteItemIds` cannot be specified together.",
            ))
        }
        (false, false) => {
            return Err(err(
                "MissingParameter",
                "One of `RouteIds` or `RouteItemIds` is required.",
            ))
        }
        (true, false) => route_ids(&r, "RouteIds")?
            .iter()
            .map(|id| find(&|x| x.route_id == *id, id))
            .collect::<Result<_, _>>()?,
        (false, true) => r
            .strings_opt("RouteItemIds")?
            .unwrap_or_default()
            .iter()
            .map(|id| find(&|x| x.route_item_id == *id, id))
            .collect::<Result<_, _>>()?,
    };
    if targets.len() > 100 {
        return Err(err(
            "InvalidParameterValue.LimitExceeded",
            "At most 100 routes per request.",
        ));
    }
    for i in targets {
        s.route_tables[ti].routes[i].enabled = enable;
    }
    Ok(json!({}))
}
