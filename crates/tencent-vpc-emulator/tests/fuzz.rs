//! Property-based fuzzing of the emulator's request handling: sequences of actions with
//! bodies built from the API's parameter names and values of every type (right, wrong and
//! absurd). Properties: no panic, every answer is a result or a documented-looking error
//! code, and the state stays a valid scenario within its quota whatever was accepted.
//! Failing seeds are kept in `tests/proptest-regressions/fuzz.txt` (commit it).

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tencent_vpc_emulator::ops;
use tencent_vpc_emulator::scenario::Scenario;

const ACTIONS: &[(&str, &str)] = &[
    ("vpc", "DescribeRouteTables"),
    ("vpc", "DescribeSubnets"),
    ("vpc", "CreateRoutes"),
    ("vpc", "DeleteRoutes"),
    ("vpc", "ReplaceRoutes"),
    ("vpc", "EnableRoutes"),
    ("vpc", "DisableRoutes"),
    ("cvm", "DescribeInstances"),
    ("vpc", "NoSuchAction"),
];

const PARAMS: &[&str] = &[
    "RouteTableId",
    "RouteTableIds",
    "Routes",
    "RouteIds",
    "RouteItemIds",
    "Filters",
    "Offset",
    "Limit",
    "SubnetIds",
    "InstanceIds",
    "VpcId",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0i64..8).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        prop::sample::select(vec![
            "rtb-main",
            "rtb-b",
            "rtb-none",
            "vpc-lab",
            "subnet-a",
            "ins-a1",
            "10.244.1.0/24",
            "10.244.1.5/24",
            "172.16.0.0/16",
            "0.0.0.0/0",
            "172.16.1.7",
            "NORMAL_CVM",
            "NAT",
            "vpngw-1",
            "route-table-id",
            "vpc-id",
            "gateway-id",
            "1",
            "",
        ])
        .prop_map(|s| Value::String(s.to_string())),
        any::<String>().prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 20, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "DestinationCidrBlock",
                        "GatewayType",
                        "GatewayId",
                        "RouteDescription",
                        "RouteId",
                        "RouteItemId",
                        "Name",
                        "Values",
                        "Other",
                    ]),
                    inner,
                ),
                0..5,
            )
            .prop_map(|kvs| Value::Object(
                kvs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

/// A well-formed route write (so sequences reach deep states: full tables, replaced and
/// toggled routes), on a table that may or may not exist.
fn route_write() -> impl Strategy<Value = (usize, Map<String, Value>)> {
    (
        2usize..7,
        prop::sample::select(vec!["rtb-main", "rtb-b", "rtb-none"]),
        prop::collection::vec(
            (
                0u8..6,
                prop::sample::select(vec!["172.16.1.7", "172.16.2.7", "10.0.0.1"]),
            ),
            1..4,
        ),
        prop::collection::vec(1u64..8, 1..3),
    )
        .prop_map(|(action, table, routes, ids)| {
            let routes: Vec<Value> = routes
                .into_iter()
                .zip(ids.iter().cycle())
                .map(|((third, gw), id)| {
                    json!({
                        "DestinationCidrBlock": format!("10.244.{third}.0/24"),
                        "GatewayType": "NORMAL_CVM",
                        "GatewayId": gw,
                        "RouteId": id,
                        "RouteDescription": "flannel:fuzz",
                    })
                })
                .collect();
            let body = json!({"RouteTableId": table, "Routes": routes, "RouteIds": ids});
            let mut body = body.as_object().unwrap().clone();
            match ACTIONS[action].1 {
                "CreateRoutes" => {
                    body.remove("RouteIds");
                }
                "ReplaceRoutes" => {}
                _ => {
                    body.remove("Routes");
                }
            }
            (action, body)
        })
}

fn call() -> impl Strategy<Value = (usize, Map<String, Value>)> {
    prop_oneof![
        (
            0..ACTIONS.len(),
            prop::collection::vec((prop::sample::select(PARAMS), value()), 0..4)
                .prop_map(|kvs| kvs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
        ),
        route_write(),
    ]
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 1500,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "tests/proptest-regressions/fuzz.txt",
            ),
        )),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_request_sequence_keeps_a_valid_state(calls in prop::collection::vec(call(), 1..8)) {
        let mut s = Scenario::from_json(include_str!("../scenarios/lab.json")).unwrap();
        s.route_quota = 4;
        for (i, body) in calls {
            let (service, action) = ACTIONS[i];
            match ops::dispatch(&mut s, service, action, &body, 1_735_689_600) {
                Ok(v) => prop_assert!(v.is_object(), "{action} {body:?} -> {v}"),
                Err(e) => prop_assert!(
                    !e.code.is_empty() && e.code.chars().next().unwrap().is_ascii_uppercase(),
                    "{action}: {e:?}"
                ),
            }
            let mut check = s.clone();
            let valid = check.validate();
            prop_assert!(valid.is_ok(), "after {action} {body:?}: {:?}", valid.err());
            for t in &s.route_tables {
                prop_assert!(t.routes.len() <= s.route_quota, "{} over quota", t.route_table_id);
            }
        }
    }
}
