//! JSON renderings with the documented field names and types.

use crate::scenario::{RouteSpec, RouteTableSpec, Scenario};
use serde_json::{json, Value};

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

pub(crate) fn table_json(s: &Scenario, t: &RouteTableSpec, routes: Option<&[RouteSpec]>) -> Value {
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
        "TagSet": t.tags.iter().map(|(k, v)| json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
        "LocalCidrForCcn": [],
    })
}

// ---- actions ----
