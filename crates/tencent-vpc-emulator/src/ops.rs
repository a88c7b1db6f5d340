//! The API actions as pure functions over the emulated account: request JSON in, response
//! JSON or a documented error out. No I/O, no clock (time is passed in).

use crate::scenario::{RouteSpec, RouteTableSpec, Scenario};
use ipnet::Ipv4Net;
use serde_json::{json, Map, Value};
use std::net::Ipv4Addr;

/// An API error: code and message, as sent in `Response.Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiErr {
    pub code: String,
    pub message: String,
}

pub fn err(code: &str, message: impl Into<String>) -> ApiErr {
    ApiErr {
        code: code.to_string(),
        message: message.into(),
    }
}

pub type OpResult = Result<Value, ApiErr>;

/// Whether a successful action changed the account (for persistence and the data plane).
pub fn mutates(action: &str) -> bool {
    matches!(
        action,
        "CreateRoutes" | "DeleteRoutes" | "ReplaceRoutes" | "EnableRoutes" | "DisableRoutes"
    )
}

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

/// `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn created_time(now: i64) -> String {
    let secs = now.rem_euclid(86_400);
    format!(
        "{} {:02}:{:02}:{:02}",
        tencent_cloud::signing::utc_date(now),
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

// ---- request field access: names are case-sensitive, types checked ----

struct Req<'a>(&'a Map<String, Value>);

impl<'a> Req<'a> {
    fn only(&self, allowed: &[&str]) -> Result<(), ApiErr> {
        match self.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(err(
                "UnknownParameter",
                format!("The parameter `{k}` is not recognized."),
            )),
            None => Ok(()),
        }
    }
    fn str_opt(&self, name: &str) -> Result<Option<&'a str>, ApiErr> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(err(
                "InvalidParameter",
                format!("The value type of parameter `{name}` should be string."),
            )),
        }
    }
    fn str_req(&self, name: &str) -> Result<&'a str, ApiErr> {
        self.str_opt(name)?.ok_or_else(|| {
            err(
                "MissingParameter",
                format!("The request is missing a required parameter `{name}`."),
            )
        })
    }
    fn array_opt(&self, name: &str) -> Result<Option<&'a Vec<Value>>, ApiErr> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(err(
                "InvalidParameter",
                format!("The value type of parameter `{name}` should be array."),
            )),
        }
    }
    fn strings_opt(&self, name: &str) -> Result<Option<Vec<&'a str>>, ApiErr> {
        let Some(a) = self.array_opt(name)? else {
            return Ok(None);
        };
        a.iter()
            .map(|v| {
                v.as_str().ok_or_else(|| {
                    err(
                        "InvalidParameter",
                        format!("`{name}` must be an array of strings."),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
    /// Offset/Limit: strings in the VPC API, integers in CVM.
    fn paging(&self, as_string: bool) -> Result<(usize, usize), ApiErr> {
        let read = |name: &str, default: usize| -> Result<usize, ApiErr> {
            match (self.0.get(name), as_string) {
                (None | Some(Value::Null), _) => Ok(default),
                (Some(Value::String(s)), true) => s.parse().map_err(|_| {
                    err(
                        "InvalidParameterValue.Malformed",
                        format!("`{name}` must be a non-negative integer string, got {s:?}."),
                    )
                }),
                (Some(Value::Number(n)), false) => {
                    n.as_u64().map(|n| n as usize).ok_or_else(|| {
                        err(
                            "InvalidParameterValue",
                            format!("`{name}` must be a non-negative integer."),
                        )
                    })
                }
                (Some(_), true) => Err(err(
                    "InvalidParameter",
                    format!("The value type of parameter `{name}` should be string."),
                )),
                (Some(_), false) => Err(err(
                    "InvalidParameter",
                    format!("The value type of parameter `{name}` should be integer."),
                )),
            }
        };
        let offset = read("Offset", 0)?;
        let limit = read("Limit", 20)?;
        if limit > 100 {
            return Err(err(
                "InvalidParameterValue.LimitExceeded",
                format!("`Limit` {limit} exceeds 100."),
            ));
        }
        Ok((offset, limit))
    }
    fn has(&self, name: &str) -> bool {
        self.0.get(name).is_some_and(|v| !v.is_null())
    }
    fn filters(&self) -> Result<Vec<(&'a str, Vec<&'a str>)>, ApiErr> {
        let Some(a) = self.array_opt("Filters")? else {
            return Ok(Vec::new());
        };
        a.iter()
            .map(|f| {
                let f = f.as_object().ok_or_else(|| {
                    err("InvalidParameter", "Each of `Filters` must be an object.")
                })?;
                let r = Req(f);
                r.only(&["Name", "Values"])?;
                Ok((
                    r.str_req("Name")?,
                    r.strings_opt("Values")?.unwrap_or_default(),
                ))
            })
            .collect()
    }
}

fn check_filters(filters: &[(&str, Vec<&str>)], known: &[&str]) -> Result<(), ApiErr> {
    for (name, _) in filters {
        if !known.contains(name) {
            return Err(err(
                "InvalidParameter.FilterInvalidKey",
                format!("The filter key `{name}` is invalid."),
            ));
        }
    }
    Ok(())
}

fn filter_match(filters: &[(&str, Vec<&str>)], field: impl Fn(&str) -> Option<String>) -> bool {
    filters.iter().all(|(name, values)| {
        field(name).is_some_and(|v| values.iter().any(|x| x.eq_ignore_ascii_case(&v)))
    })
}

fn page(items: Vec<Value>, offset: usize, limit: usize) -> (usize, Vec<Value>) {
    let total = items.len();
    (total, items.into_iter().skip(offset).take(limit).collect())
}

// ---- JSON renderings (documented field names and types) ----

pub fn route_json(r: &RouteSpec, table: &str) -> Value {
    json!({
        "DestinationCidrBlock": r.destination_cidr_block.to_string(),
        "GatewayType": r.gateway_type,
        "GatewayId": r.gateway_id,
        "RouteId": r.route_id,
        "RouteDescription": r.route_description,
        "Enabled": r.enabled,
        "RouteType": r.route_type,
        "RouteTableId": table,
        "DestinationIpv6CidrBlock": "",
        "RouteItemId": r.route_item_id,
        "PublishedToVbc": false,
        "CreatedTime": r.created_time,
    })
}

fn table_json(s: &Scenario, t: &RouteTableSpec, routes: Option<&[RouteSpec]>) -> Value {
    let assoc: Vec<Value> = s
        .subnets
        .iter()
        .filter(|sn| sn.route_table_id.as_deref() == Some(&t.route_table_id))
        .map(|sn| json!({"SubnetId": sn.subnet_id, "RouteTableId": t.route_table_id}))
        .collect();
    let routes = routes.unwrap_or(&t.routes);
    json!({
        "VpcId": t.vpc_id,
        "RouteTableId": t.route_table_id,
        "RouteTableName": t.name,
        "AssociationSet": assoc,
        "RouteSet": routes.iter().map(|r| route_json(r, &t.route_table_id)).collect::<Vec<_>>(),
        "Main": t.main,
        "CreatedTime": "2020-01-01 00:00:00",
        "TagSet": [],
        "LocalCidrForCcn": [],
    })
}

// ---- actions ----

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
            filter_match(&filters, |name| match name {
                "route-table-id" => Some(t.route_table_id.clone()),
                "route-table-name" => Some(t.name.clone()),
                "vpc-id" => Some(t.vpc_id.clone()),
                "association.main" => Some(t.main.to_string()),
                "next-hop-type" => None,
                _ => None,
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
    let vpc = s
        .vpcs
        .iter()
        .find(|v| v.vpc_id == table.vpc_id)
        .expect("validated scenario");
    if vpc.cidr_block.contains(&dest.network()) || dest.contains(&vpc.cidr_block.network()) {
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

/// Run one action. `service` is the product from the credential scope.
pub fn dispatch(
    s: &mut Scenario,
    service: &str,
    action: &str,
    req: &Map<String, Value>,
    now: i64,
) -> OpResult {
    match (service, action) {
        ("vpc", "DescribeRouteTables") => describe_route_tables(s, req),
        ("vpc", "DescribeSubnets") => describe_subnets(s, req),
        ("vpc", "CreateRoutes") => create_routes(s, req, now),
        ("vpc", "DeleteRoutes") => delete_routes(s, req),
        ("vpc", "ReplaceRoutes") => replace_routes(s, req),
        ("vpc", "EnableRoutes") => toggle_routes(s, req, true),
        ("vpc", "DisableRoutes") => toggle_routes(s, req, false),
        ("cvm", "DescribeInstances") => describe_instances(s, req),
        _ => Err(err(
            "InvalidAction",
            format!("The action `{action}` does not exist for service `{service}`."),
        )),
    }
}
