//! The actions as pure functions: documented errors, quotas, all-or-nothing, paging types.

use serde_json::{json, Value};
use tencent_vpc_emulator::ops::{self, ApiErr};
use tencent_vpc_emulator::scenario::Scenario;

fn lab() -> Scenario {
    Scenario::from_json(include_str!("../scenarios/lab.json")).unwrap()
}

fn call(s: &mut Scenario, service: &str, action: &str, req: Value) -> Result<Value, ApiErr> {
    ops::dispatch(s, service, action, req.as_object().unwrap(), 1_735_689_600)
}

fn code(r: Result<Value, ApiErr>) -> String {
    r.unwrap_err().code
}

fn route(dest: &str, gw: &str) -> Value {
    json!({"DestinationCidrBlock": dest, "GatewayType": "NORMAL_CVM", "GatewayId": gw, "RouteDescription": "flannel-rs"})
}

#[test]
fn create_describe_replace_delete() {
    let mut s = lab();
    let r = call(
        &mut s,
        "vpc",
        "CreateRoutes",
        json!({"RouteTableId": "rtb-main", "Routes": [route("10.244.1.0/24", "172.16.1.7")]}),
    )
    .unwrap();
    let created = &r["RouteTableSet"][0]["RouteSet"][0];
    assert_eq!(created["RouteType"], "USER");
    assert_eq!(created["Enabled"], true);
    assert_eq!(created["CreatedTime"], "2025-01-01 00:00:00");
    let id = created["RouteId"].as_u64().unwrap();
    assert!(created["RouteItemId"].as_str().unwrap().starts_with("rti-"));

    let d = call(&mut s, "vpc", "DescribeRouteTables", json!({"Filters": [{"Name": "vpc-id", "Values": ["vpc-lab"]}], "Offset": "0", "Limit": "100"})).unwrap();
    assert_eq!(d["TotalCount"], 2);
    assert_eq!(
        d["RouteTableSet"][0]["RouteSet"].as_array().unwrap().len(),
        2
    );
    assert_eq!(
        d["RouteTableSet"][0]["AssociationSet"][0]["SubnetId"],
        "subnet-a"
    );

    let rep = call(&mut s, "vpc", "ReplaceRoutes", json!({"RouteTableId": "rtb-main", "Routes": [{"RouteId": id, "DestinationCidrBlock": "10.244.1.0/24", "GatewayType": "NORMAL_CVM", "GatewayId": "172.16.1.8"}]})).unwrap();
    assert_eq!(rep["OldRouteSet"][0]["GatewayId"], "172.16.1.7");
    assert_eq!(rep["NewRouteSet"][0]["GatewayId"], "172.16.1.8");
    assert_eq!(
        rep["NewRouteSet"][0]["RouteId"], id,
        "replace keeps the RouteId"
    );

    call(
        &mut s,
        "vpc",
        "DisableRoutes",
        json!({"RouteTableId": "rtb-main", "RouteIds": [id]}),
    )
    .unwrap();
    assert!(
        !s.route_tables[0]
            .routes
            .iter()
            .find(|r| r.route_id == id)
            .unwrap()
            .enabled
    );
    call(
        &mut s,
        "vpc",
        "EnableRoutes",
        json!({"RouteTableId": "rtb-main", "RouteIds": [id]}),
    )
    .unwrap();
    assert!(
        s.route_tables[0]
            .routes
            .iter()
            .find(|r| r.route_id == id)
            .unwrap()
            .enabled,
        "EnableRoutes enabled the route again"
    );

    let del = call(
        &mut s,
        "vpc",
        "DeleteRoutes",
        json!({"RouteTableId": "rtb-main", "Routes": [{"RouteId": id}]}),
    )
    .unwrap();
    assert_eq!(del["RouteSet"][0]["RouteId"], id);
    assert_eq!(
        code(call(
            &mut s,
            "vpc",
            "DeleteRoutes",
            json!({"RouteTableId": "rtb-main", "Routes": [{"RouteId": id}]})
        )),
        "ResourceNotFound"
    );
    assert_eq!(
        code(call(
            &mut s,
            "vpc",
            "ReplaceRoutes",
            json!({"RouteTableId": "rtb-main", "Routes": [{"RouteId": id, "DestinationCidrBlock": "10.244.1.0/24", "GatewayType": "NORMAL_CVM", "GatewayId": "172.16.1.8"}]})
        )),
        "UnsupportedOperation.RecordNotExists"
    );
}

#[test]
fn documented_create_errors() {
    let mut s = lab();
    let create = |s: &mut Scenario, routes: Value| {
        call(
            s,
            "vpc",
            "CreateRoutes",
            json!({"RouteTableId": "rtb-main", "Routes": routes}),
        )
    };
    assert_eq!(
        code(create(
            &mut s,
            json!([route("172.16.9.0/24", "172.16.1.7")])
        )),
        "InvalidParameterValue.VpcCidrConflict"
    );
    assert_eq!(
        code(create(
            &mut s,
            json!([route("10.244.1.0/24", "172.16.1.99")])
        )),
        "InvalidParameterValue.RouteNextHopInvalid"
    );
    assert_eq!(
        code(create(&mut s, json!([route("10.244.1.0/24", "10.0.0.1")]))),
        "InvalidParameterValue.RouteNextHopInvalid"
    );
    assert_eq!(
        code(create(
            &mut s,
            json!([route("10.244.1.5/24", "172.16.1.7")])
        )),
        "InvalidParameterValue.Malformed"
    );
    assert_eq!(
        code(create(
            &mut s,
            json!([
                route("10.244.1.0/24", "172.16.1.7"),
                route("10.244.1.0/24", "172.16.1.7")
            ])
        )),
        "InvalidParameterValue.Duplicate"
    );
    create(&mut s, json!([route("10.244.1.0/24", "172.16.1.7")])).unwrap();
    assert_eq!(
        code(create(
            &mut s,
            json!([route("10.244.1.0/24", "172.16.1.7")])
        )),
        "InvalidParameterValue.Duplicate"
    );
    assert_eq!(
        code(create(
            &mut s,
            json!([{"DestinationCidrBlock": "192.168.100.0/24", "GatewayType": "NORMAL_CVM", "GatewayId": "172.16.1.7"}])
        )),
        "UnsupportedOperation.EcmpWithUserRoute"
    );
    assert_eq!(
        code(call(
            &mut s,
            "vpc",
            "CreateRoutes",
            json!({"RouteTableId": "rtb-nope", "Routes": [route("10.244.2.0/24", "172.16.1.7")]})
        )),
        "ResourceNotFound"
    );
    assert_eq!(code(create(&mut s, json!([]))), "InvalidParameterValue");
    assert_eq!(
        code(call(
            &mut s,
            "vpc",
            "CreateRoutes",
            json!({"Routes": [route("10.244.2.0/24", "172.16.1.7")]})
        )),
        "MissingParameter"
    );
    assert_eq!(
        code(create(
            &mut s,
            json!([{"DestinationCidrBlock": "10.244.2.0/24", "GatewayType": "NORMAL_CVM", "GatewayId": "172.16.1.7", "Bogus": 1}])
        )),
        "UnknownParameter"
    );
}

#[test]
fn quota_is_all_or_nothing() {
    let mut s = lab();
    s.route_quota = 5; // one route exists already (the VPN route)
    let routes: Vec<Value> = (0..4)
        .map(|i| route(&format!("10.244.{i}.0/24"), "172.16.1.7"))
        .collect();
    call(
        &mut s,
        "vpc",
        "CreateRoutes",
        json!({"RouteTableId": "rtb-main", "Routes": routes}),
    )
    .unwrap();
    assert_eq!(s.route_tables[0].routes.len(), 5);
    let two: Vec<Value> = (10..12)
        .map(|i| route(&format!("10.244.{i}.0/24"), "172.16.1.7"))
        .collect();
    let e = call(
        &mut s,
        "vpc",
        "CreateRoutes",
        json!({"RouteTableId": "rtb-main", "Routes": two}),
    )
    .unwrap_err();
    assert_eq!(e.code, "LimitExceeded");
    assert!(e.message.contains("5/5"), "{}", e.message);
    assert_eq!(s.route_tables[0].routes.len(), 5, "nothing was created");
    // Another table has its own quota.
    call(
        &mut s,
        "vpc",
        "CreateRoutes",
        json!({"RouteTableId": "rtb-b", "Routes": [route("10.244.10.0/24", "172.16.2.7")]}),
    )
    .unwrap();
    // A quota lowered below usage keeps the routes (the state still reads back) and refuses
    // creates; deletes still work.
    s.route_quota = 2;
    let back = Scenario::from_json(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back.route_tables[0].routes.len(), 5);
    let e = call(
        &mut s,
        "vpc",
        "CreateRoutes",
        json!({"RouteTableId": "rtb-main", "Routes": [route("10.244.20.0/24", "172.16.1.7")]}),
    )
    .unwrap_err();
    assert_eq!(e.code, "LimitExceeded");
}

#[test]
fn paging_types_and_filters() {
    let mut s = lab();
    let one = call(
        &mut s,
        "vpc",
        "DescribeRouteTables",
        json!({"Offset": "1", "Limit": "1"}),
    )
    .unwrap();
    assert_eq!(
        (
            one["TotalCount"].as_u64(),
            one["RouteTableSet"].as_array().unwrap().len()
        ),
        (Some(2), 1)
    );
    assert_eq!(one["RouteTableSet"][0]["RouteTableId"], "rtb-b");
    assert_eq!(
        code(call(
            &mut s,
            "vpc",
            "DescribeRouteTables",
            json!({"Offset": 0})
        )),
        "InvalidParameter"
    );
    assert_eq!(
        code(call(
            &mut s,
            "vpc",
            "DescribeRouteTables",
            json!({"Limit": "101"})
        )),
        "InvalidParameterValue.LimitExceeded"
    );
    assert_eq!(
        code(call(
            &mut s,
            "vpc",
            "DescribeRouteTables",
            json!({"RouteTableIds": ["rtb-b"], "Filters": []})
        )),
        "InvalidParameter.Coexist"
    );
    assert_eq!(
        code(call(
            &mut s,
            "vpc",
            "DescribeRouteTables",
            json!({"Filters": [{"Name": "color", "Values": ["red"]}]})
        )),
        "InvalidParameter.FilterInvalidKey"
    );
    let main = call(
        &mut s,
        "vpc",
        "DescribeRouteTables",
        json!({"Filters": [{"Name": "association.main", "Values": ["true"]}]}),
    )
    .unwrap();
    assert_eq!(main["RouteTableSet"][0]["RouteTableId"], "rtb-main");
    let subnets = call(
        &mut s,
        "vpc",
        "DescribeSubnets",
        json!({"Filters": [{"Name": "vpc-id", "Values": ["vpc-lab"]}]}),
    )
    .unwrap();
    assert_eq!(subnets["TotalCount"], 2);
    assert_eq!(subnets["SubnetSet"][1]["RouteTableId"], "rtb-b");
    let inst = call(&mut s, "cvm", "DescribeInstances", json!({"Filters": [{"Name": "private-ip-address", "Values": ["172.16.2.7"]}], "Offset": 0, "Limit": 10})).unwrap();
    assert_eq!(inst["InstanceSet"][0]["InstanceId"], "ins-b1");
    assert_eq!(
        inst["InstanceSet"][0]["VirtualPrivateCloud"]["SubnetId"],
        "subnet-b"
    );
    assert_eq!(
        code(call(
            &mut s,
            "cvm",
            "DescribeInstances",
            json!({"Offset": "0"})
        )),
        "InvalidParameter"
    );
    assert_eq!(
        code(call(&mut s, "vpc", "DescribeInstances", json!({}))),
        "InvalidAction"
    );
    assert_eq!(
        code(call(&mut s, "vpc", "ResetRoutes", json!({}))),
        "InvalidAction"
    );
}

#[test]
fn system_routes_cannot_be_deleted_and_toggle_needs_one_selector() {
    let mut s = lab();
    s.route_tables[0].routes[0].route_type = "NETD".into();
    let id = s.route_tables[0].routes[0].route_id;
    assert_eq!(
        code(call(
            &mut s,
            "vpc",
            "DeleteRoutes",
            json!({"RouteTableId": "rtb-main", "Routes": [{"RouteId": id}]})
        )),
        "UnsupportedOperation.SystemRoute"
    );
    assert_eq!(
        code(call(
            &mut s,
            "vpc",
            "EnableRoutes",
            json!({"RouteTableId": "rtb-main"})
        )),
        "MissingParameter"
    );
    assert_eq!(
        code(call(
            &mut s,
            "vpc",
            "EnableRoutes",
            json!({"RouteTableId": "rtb-main", "RouteIds": [id], "RouteItemIds": ["x"]})
        )),
        "InvalidParameter.Coexist"
    );
}

#[test]
fn scenario_errors_name_the_problem() {
    let bad = include_str!("../scenarios/lab.json").replace("\"route_quota\"", "\"route_qouta\"");
    assert!(Scenario::from_json(&bad)
        .unwrap_err()
        .to_string()
        .contains("route_qouta"));
    let bad = include_str!("../scenarios/lab.json").replace(
        "\"private_ip\": \"172.16.2.7\"",
        "\"private_ip\": \"10.9.9.9\"",
    );
    assert!(Scenario::from_json(&bad)
        .unwrap_err()
        .to_string()
        .contains("instance ins-b1: 10.9.9.9 is outside subnet subnet-b"));
}

#[test]
fn next_hop_type_and_tag_key_filters_match_tables() {
    let mut s = lab();
    s.route_tables[1]
        .tags
        .insert("cluster".into(), "lab".into());
    let ids = |s: &mut Scenario, filter: Value| -> Vec<String> {
        let d = call(
            s,
            "vpc",
            "DescribeRouteTables",
            json!({"Filters": [filter]}),
        )
        .unwrap();
        d["RouteTableSet"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["RouteTableId"].as_str().unwrap().to_string())
            .collect()
    };
    // rtb-main holds a VPN route; rtb-b holds none yet.
    assert_eq!(
        ids(&mut s, json!({"Name": "next-hop-type", "Values": ["VPN"]})),
        ["rtb-main"]
    );
    assert!(ids(
        &mut s,
        json!({"Name": "next-hop-type", "Values": ["NORMAL_CVM"]})
    )
    .is_empty());
    call(
        &mut s,
        "vpc",
        "CreateRoutes",
        json!({"RouteTableId": "rtb-b", "Routes": [route("10.244.2.0/24", "172.16.2.7")]}),
    )
    .unwrap();
    assert_eq!(
        ids(
            &mut s,
            json!({"Name": "next-hop-type", "Values": ["NORMAL_CVM", "NAT"]})
        ),
        ["rtb-b"]
    );
    assert_eq!(
        ids(&mut s, json!({"Name": "tag-key", "Values": ["cluster"]})),
        ["rtb-b"]
    );
    assert!(ids(&mut s, json!({"Name": "tag-key", "Values": ["other"]})).is_empty());
    let d = call(
        &mut s,
        "vpc",
        "DescribeRouteTables",
        json!({"RouteTableIds": ["rtb-b"]}),
    )
    .unwrap();
    assert_eq!(
        d["RouteTableSet"][0]["TagSet"],
        json!([{"Key": "cluster", "Value": "lab"}])
    );
}

#[test]
fn a_default_route_to_a_nat_gateway_is_accepted_but_not_a_destination_inside_the_vpc() {
    let mut s = lab();
    let nat =
        json!({"DestinationCidrBlock": "0.0.0.0/0", "GatewayType": "NAT", "GatewayId": "nat-1"});
    call(
        &mut s,
        "vpc",
        "CreateRoutes",
        json!({"RouteTableId": "rtb-main", "Routes": [nat]}),
    )
    .unwrap();
    let inside = json!({"DestinationCidrBlock": "172.16.9.0/24", "GatewayType": "NAT", "GatewayId": "nat-1"});
    assert_eq!(
        code(call(
            &mut s,
            "vpc",
            "CreateRoutes",
            json!({"RouteTableId": "rtb-main", "Routes": [inside]})
        )),
        "InvalidParameterValue.VpcCidrConflict"
    );
}

#[test]
fn scenario_values_are_checked_and_each_error_names_the_object() {
    let base: Value = serde_json::from_str(include_str!("../scenarios/lab.json")).unwrap();
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "scenario: route table rtb-main: route 192.168.100.0/24 via VPN vpngw-1: duplicate route",
            Box::new(|s| {
                let r = s["route_tables"][0]["routes"][0].clone();
                s["route_tables"][0]["routes"].as_array_mut().unwrap().push(r);
            }),
        ),
        (
            "scenario: instance ins-a2: private_ip 172.16.1.7 is already instance ins-a1's",
            Box::new(|s| s["instances"][1]["private_ip"] = json!("172.16.1.7")),
        ),
        (
            "scenario: subnet subnet-b: 172.16.0.0/23 overlaps subnet subnet-a (172.16.1.0/24)",
            Box::new(|s| s["subnets"][1]["cidr_block"] = json!("172.16.0.0/23")),
        ),
        (
            "scenario: vpc vpc-lab: 172.16.0.1/16 has host bits set (did you mean 172.16.0.0/16?)",
            Box::new(|s| s["vpcs"][0]["cidr_block"] = json!("172.16.0.1/16")),
        ),
        (
            "scenario: route table rtb-b: route 10.244.1.0/24 via NORMAL_CVM 10.0.0.7: a NORMAL_CVM next hop must be an address inside vpc-lab (172.16.0.0/16)",
            Box::new(|s| {
                s["route_tables"][1]["routes"] = json!([{"destination_cidr_block": "10.244.1.0/24", "gateway_type": "NORMAL_CVM", "gateway_id": "10.0.0.7"}]);
            }),
        ),
        (
            "scenario: rate_limit_per_second must be a positive number, not 0",
            Box::new(|s| s["rate_limit_per_second"] = json!(0)),
        ),
        (
            "scenario: credential AKIDlab0000000000000000000000000000: duplicate secret_id",
            Box::new(|s| {
                let c = s["credentials"][0].clone();
                s["credentials"].as_array_mut().unwrap().push(c);
            }),
        ),
        (
            "scenario: credential AKIDlab0000000000000000000000000000: empty secret_key",
            Box::new(|s| s["credentials"][0]["secret_key"] = json!("")),
        ),
    ];
    for (want, edit) in cases {
        let mut s = base.clone();
        edit(&mut s);
        let e = Scenario::from_json(&s.to_string()).unwrap_err();
        assert_eq!(e.to_string(), want);
    }
    assert!(Scenario::from_json(&base.to_string()).is_ok());
}

#[test]
fn vpc_limits_serve_the_scenario_quota() {
    let mut s = lab();
    s.route_quota = 7;
    let v = call(
        &mut s,
        "vpc",
        "DescribeVpcLimits",
        json!({"LimitTypes": ["route-table-max-policies", "vpc-max-route-tables"]}),
    )
    .unwrap();
    assert_eq!(
        v["VpcLimitSet"],
        json!([{"LimitType": "route-table-max-policies", "LimitValue": 7},
               {"LimitType": "vpc-max-route-tables", "LimitValue": 10}])
    );
    assert_eq!(
        code(call(&mut s, "vpc", "DescribeVpcLimits", json!({}))),
        "MissingParameter"
    );
    assert_eq!(
        code(call(
            &mut s,
            "vpc",
            "DescribeVpcLimits",
            json!({"LimitTypes": ["nope"]})
        )),
        "InvalidParameterValue"
    );
}
