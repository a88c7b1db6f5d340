#[test]
fn fallback_and_reserved_routes() {
    let parse =
        |j: &str| BackendConfig::parse("tencent-vpc", Some(&serde_json::from_str(j).unwrap()));
    match parse(r#"{"Fallback":"VXLAN","ReservedRoutes":3}"#).unwrap() {
        BackendConfig::TencentVpc(c) => {
            assert!(c.fallback_vxlan);
            assert_eq!(c.reserved_routes, 3);
        }
        other => panic!("{other:?}"),
    }
    match parse("{}").unwrap() {
        BackendConfig::TencentVpc(c) => assert!(!c.fallback_vxlan, "off by default"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        parse(r#"{"Fallback":"udp"}"#).unwrap_err().to_string(),
        "Backend.Fallback: \"udp\" is not vxlan or none"
    );
    assert_eq!(
        parse(r#"{"ReservedRoutes":-1}"#).unwrap_err().to_string(),
        "Backend.ReservedRoutes: -1 is negative"
    );
}

#[test]
fn the_readiness_probe_is_on_unless_turned_off() {
    let parse =
        |j: &str| BackendConfig::parse("tencent-vpc", Some(&serde_json::from_str(j).unwrap()));
    let probe_off = |j: &str| match parse(j).unwrap() {
        BackendConfig::TencentVpc(c) => c.no_readiness_probe,
        other => panic!("{other:?}"),
    };
    assert!(!probe_off("{}"));
    assert!(!probe_off(r#"{"ReadinessProbe":true}"#));
    assert!(probe_off(r#"{"ReadinessProbe":false}"#));
    assert!(parse(r#"{"ReadinessProbe":"no"}"#)
        .unwrap_err()
        .to_string()
        .starts_with("Backend.ReadinessProbe:"));
}

use super::*;
use secrecy::ExposeSecret;
use serde_json::json;

#[test]
fn type_names_and_alias() {
    assert_eq!(
        BackendKind::from_type("tencent-vpc"),
        Ok(BackendKind::TencentVpc)
    );
    assert_eq!(
        BackendKind::from_type("tx-vpc"),
        Ok(BackendKind::TencentVpc)
    );
    assert_eq!(
        BackendKind::from_type("TX-VPC"),
        Ok(BackendKind::TencentVpc)
    );
    assert_eq!(BackendKind::from_type("host-gw"), Ok(BackendKind::HostGw));
    assert_eq!(BackendKind::from_type("vxlan"), Ok(BackendKind::Vxlan));
    assert_eq!(
        BackendKind::from_type("WireGuard"),
        Ok(BackendKind::Wireguard)
    );
    for upstream in ["ipip", "IPsec"] {
        assert_eq!(
            BackendKind::from_type(upstream).unwrap_err().to_string(),
            format!(
                "backend type {}: an upstream flannel backend that flannel-rs does not support; supported: tencent-vpc (alias tx-vpc), host-gw, vxlan, wireguard, udp, extension, alloc",
                upstream.to_ascii_lowercase()
            )
        );
    }
    assert_eq!(
        BackendKind::from_type("gre").unwrap_err().to_string(),
        "unknown backend type: gre"
    );
    assert_eq!(
        BackendKind::from_type("").unwrap_err().to_string(),
        "unknown backend type: "
    );
}

#[test]
fn udp_port_default_and_checked() {
    let BackendConfig::Udp(c) = BackendConfig::parse("udp", None).unwrap() else {
        panic!("not udp")
    };
    assert_eq!(c.port, 8285);
    let BackendConfig::Udp(c) = BackendConfig::parse("UDP", Some(&json!({"port": 9000}))).unwrap()
    else {
        panic!("not udp")
    };
    assert_eq!(c.port, 9000);
    assert_eq!(
        BackendConfig::parse("udp", Some(&json!({"Port": 70000})))
            .unwrap_err()
            .to_string(),
        "Backend.Port: 70000 is not a UDP port"
    );
}

#[test]
fn wireguard_defaults_are_upstreams() {
    let BackendConfig::Wireguard(c) = BackendConfig::parse("wireguard", None).unwrap() else {
        panic!("not wireguard")
    };
    assert_eq!((c.listen_port, c.listen_port_v6), (51820, 51821));
    assert_eq!((c.mtu, c.keepalive_secs), (None, 0));
    assert_eq!(c.mode, WireguardMode::Separate);
    assert!(c.psk.is_none());
}

#[test]
fn wireguard_keys_parsed_and_checked() {
    let psk = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=";
    let BackendConfig::Wireguard(c) = BackendConfig::parse(
        "wireguard",
        Some(
            &json!({"listenport": 5000, "ListenPortV6": 5001, "MTU": 1400, "PSK": psk,
                     "PersistentKeepaliveInterval": 25, "Mode": "auto"}),
        ),
    )
    .unwrap() else {
        panic!("not wireguard")
    };
    assert_eq!((c.listen_port, c.listen_port_v6), (5000, 5001));
    assert_eq!((c.mtu, c.keepalive_secs), (Some(1400), 25));
    assert_eq!(c.mode, WireguardMode::Auto);
    use secrecy::ExposeSecret;
    assert_eq!(c.psk.as_ref().unwrap().expose_secret(), psk);
    // The PSK never prints: not in Debug, not in the effective config.
    let config = BackendConfig::Wireguard(c);
    assert!(!format!("{config:?}").contains(psk));
    let effective = config.effective_json(None).to_string();
    assert!(!effective.contains(psk), "{effective}");
    assert!(effective.contains(r#""PSK":"<redacted>""#), "{effective}");

    let err = |v: serde_json::Value| {
        BackendConfig::parse("wireguard", Some(&v))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err(json!({"Mode": "both"})),
        r#"Backend.Mode: "both" is not separate, auto, ipv4 or ipv6"#
    );
    assert_eq!(
        err(json!({"ListenPort": 0})),
        "Backend.ListenPort: 0 is not a UDP port"
    );
    assert_eq!(
        err(json!({"MTU": 60})),
        "Backend.MTU: 60 leaves no room for the 80-byte WireGuard overhead"
    );
    let bad = err(json!({"PSK": "not-a-key-at-all-secret"}));
    assert_eq!(
        bad,
        "Backend.PSK: is not a WireGuard key (base64 of 32 bytes, as `wg genpsk` prints)"
    );
    assert!(!bad.contains("not-a-key-at-all-secret"));
    assert_eq!(
        err(json!({"PersistentKeepaliveInterval": -1})),
        "Backend.PersistentKeepaliveInterval: -1 is not a number of seconds in 0..65535"
    );
}

#[test]
fn extension_commands_case_insensitively() {
    let BackendConfig::Extension(c) = BackendConfig::parse(
        "Extension",
        Some(&json!({"Type":"extension","prestartupcommand":"cat /etc/id","SubnetAddCommand":"add $SUBNET"})),
    )
    .unwrap() else {
        panic!("not extension")
    };
    assert_eq!(c.pre_startup, "cat /etc/id");
    assert_eq!(c.subnet_add, "add $SUBNET");
    assert_eq!(c.post_startup, "");
    assert_eq!(
        BackendConfig::parse("extension", Some(&json!({"SubnetRemoveCommand": 7})))
            .unwrap_err()
            .to_string(),
        "Backend.SubnetRemoveCommand: expected a string, found 7"
    );
}

#[test]
fn vxlan_defaults_and_fields() {
    let BackendConfig::Vxlan(c) =
        BackendConfig::parse("vxlan", Some(&json!({"Type":"vxlan"}))).unwrap()
    else {
        panic!()
    };
    assert_eq!(c.vni, 1);
    let BackendConfig::Vxlan(c) = BackendConfig::parse(
        "vxlan",
        Some(&json!({"vni": 42, "Port": 4789, "DirectRouting": true})),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!((c.vni, c.port, c.direct_routing), (42, 4789, true));
    let e = BackendConfig::parse("vxlan", Some(&json!({"Port": 70000}))).unwrap_err();
    assert_eq!(e.to_string(), "Backend.Port: 70000 is not a UDP port");
}

#[test]
fn tencent_options_defaults_and_errors_naming_the_key() {
    let BackendConfig::TencentVpc(c) =
        BackendConfig::parse("tencent-vpc", Some(&json!({"Type": "tencent-vpc"}))).unwrap()
    else {
        panic!()
    };
    assert_eq!(c.mode, TencentVpcMode::PerNode);
    assert!(c.route_table_ids.is_empty() && !c.adopt_untagged_routes);
    assert_eq!((c.cluster_name, c.resync_interval_secs), (None, None));
    let BackendConfig::TencentVpc(c) = BackendConfig::parse(
        "tx-vpc",
        Some(
            &json!({"RouteTableIds": ["rtb-a", "rtb-b", "rtb-a"], "ClusterName": "prod-1",
            "AdoptUntaggedRoutes": true, "ResyncInterval": 30, "Mode": "controller",
            "MetadataURL": "http://127.0.0.1:9/latest/meta-data/"}),
        ),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(c.route_table_ids, vec!["rtb-a", "rtb-b"]);
    assert_eq!(c.cluster_name.as_deref(), Some("prod-1"));
    assert!(c.adopt_untagged_routes);
    assert_eq!(c.resync_interval_secs, Some(30));
    assert_eq!(c.mode, TencentVpcMode::Controller);
    for (raw, message) in [
        (
            json!({"ResyncInterval": 5}),
            "Backend.ResyncInterval: 5 is below the minimum of 10 seconds",
        ),
        (
            json!({"ResyncInterval": 9223372036854775807_i64}),
            "Backend.ResyncInterval: 9223372036854775807 is above the maximum of 3600 seconds",
        ),
        (
            json!({"ResyncInterval": -1}),
            "Backend.ResyncInterval: -1 is below the minimum of 10 seconds",
        ),
        (
            json!({"ResyncInterval": "60"}),
            "Backend.ResyncInterval: expected an integer, found \"60\"",
        ),
        (
            json!({"ClusterName": "Prod_1"}),
            "Backend.ClusterName: \"Prod_1\" must be 1 to 40 of a-z, 0-9 and -",
        ),
        (
            json!({"Mode": "both"}),
            "Backend.Mode: \"both\" is not per-node or controller",
        ),
        (
            json!({"RouteTableIds": "rtb-a"}),
            "Backend.RouteTableIds: expected an array of strings, found a string",
        ),
        (
            json!({"RouteTableIds": [7]}),
            "Backend.RouteTableIds: 7 is not a route table id (rtb-...)",
        ),
        (
            json!({"AdoptUntaggedRoutes": "yes"}),
            "Backend.AdoptUntaggedRoutes: expected a boolean, found \"yes\"",
        ),
    ] {
        let e = BackendConfig::parse("tencent-vpc", Some(&raw)).unwrap_err();
        assert_eq!(e.to_string(), message, "{raw}");
    }
    assert_eq!(
        cluster_name_for(&"10.244.0.0/16".parse().unwrap()),
        "10-244-0-0-16"
    );
}

#[test]
fn tencent_secret_is_kept_but_never_printed() {
    let raw = json!({"Type":"tx-vpc","AccessKeyID":"AKIDx","AccessKeySecret":"topsecret"});
    let cfg = BackendConfig::parse("tx-vpc", Some(&raw)).unwrap();
    let dbg = format!("{cfg:?}");
    assert!(!dbg.contains("topsecret"), "{dbg}");
    let BackendConfig::TencentVpc(c) = cfg else {
        panic!()
    };
    assert_eq!(c.access_key_secret.unwrap().expose_secret(), "topsecret");
    let e = BackendConfig::parse("tx-vpc", Some(&json!({"AccessKeySecret": 12345}))).unwrap_err();
    assert!(!e.to_string().contains("12345"));
}
