use super::*;

fn check(text: &str) -> Result<ValidatedNetConfig, ConfigError> {
    parse_and_check(text)
}

fn v4(text: &str) -> Ipv4Pool {
    check(text).unwrap().ipv4.unwrap()
}

fn v6(text: &str) -> Ipv6Pool {
    check(text).unwrap().ipv6.unwrap()
}

fn err(text: &str) -> String {
    check(text).unwrap_err().to_string()
}

#[test]
fn acceptance_1_lowercase_keys_defaults_and_udp() {
    let c = check(r#"{"network":"10.3.0.0/16"}"#).unwrap();
    let p = c.ipv4.unwrap();
    assert_eq!(p.subnet_len, 24);
    assert_eq!(p.subnet_min, "10.3.1.0".parse::<Ipv4Addr>().unwrap());
    assert_eq!(p.subnet_max, "10.3.255.0".parse::<Ipv4Addr>().unwrap());
    assert_eq!(c.backend_type, "udp");
    assert!(c.enable_ipv4());
    assert!(!c.enable_ipv6());
}

#[test]
fn acceptance_2_small_network_splits_in_four() {
    let p = v4(r#"{"Network":"10.0.0.0/24"}"#);
    assert_eq!(p.subnet_len, 26);
    assert_eq!(p.subnet_min, "10.0.0.64".parse::<Ipv4Addr>().unwrap());
    assert_eq!(p.subnet_max, "10.0.0.192".parse::<Ipv4Addr>().unwrap());
}

#[test]
fn acceptance_3_network_too_small() {
    assert_eq!(
        err(r#"{"Network":"10.0.0.0/29"}"#),
        "network is too small. Minimum useful network prefix is /28"
    );
    // /28 is the smallest accepted: four /30s.
    assert_eq!(v4(r#"{"Network":"10.0.0.0/28"}"#).subnet_len, 30);
}

#[test]
fn acceptance_4_subnet_len_bounds() {
    assert_eq!(
        err(r#"{"Network":"10.0.0.0/16","SubnetLen":17}"#),
        "network must be able to accommodate at least four subnets"
    );
    assert_eq!(
        err(r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#),
        "SubnetLen must be less than /31"
    );
    assert_eq!(
        v4(r#"{"Network":"10.0.0.0/16","SubnetLen":18}"#).subnet_len,
        18
    );
}

#[test]
fn acceptance_5_subnet_min_max() {
    assert_eq!(
        err(r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.0.128"}"#),
        "SubnetMin is not on a SubnetLen boundary: 10.3.0.128"
    );
    assert_eq!(
        err(r#"{"Network":"10.3.0.0/16","SubnetMax":"10.4.0.0"}"#),
        "SubnetMax is not in the range of the Network"
    );
    assert_eq!(
        err(r#"{"Network":"10.3.0.0/16","SubnetMin":"10.2.0.0"}"#),
        "SubnetMin is not in the range of the Network"
    );
    assert_eq!(
        err(r#"{"Network":"10.3.0.0/16","SubnetMax":"10.3.7.64"}"#),
        "SubnetMax is not on a SubnetLen boundary: 10.3.7.64"
    );
}

#[test]
fn acceptance_6_ipv6_only() {
    let c = check(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}"#).unwrap();
    let p = c.ipv6.unwrap();
    assert_eq!(p.subnet_len, 64);
    assert_eq!(p.subnet_min, "fc00:0:0:1::".parse::<Ipv6Addr>().unwrap());
    assert_eq!(p.subnet_max, "fc00:0:0:ffff::".parse::<Ipv6Addr>().unwrap());
    assert_eq!(c.ipv4, None, "no IPv4 pool when IPv4 is off");
}

#[test]
fn acceptance_7_empty_config() {
    assert_eq!(
        err("{}"),
        "please define a correct Network parameter in the flannel config"
    );
}

#[test]
fn ipv6_errors() {
    let base = r#""EnableIPv6":true,"Network":"10.0.0.0/16""#;
    assert_eq!(
        err(&format!("{{{base}}}")),
        "please define a correct IPv6Network parameter in the flannel config"
    );
    assert_eq!(
        err(&format!(r#"{{{base},"IPv6Network":"fc00::/125"}}"#)),
        "IPv6Network is too small. Minimum useful network prefix is /124"
    );
    assert_eq!(
        err(&format!(
            r#"{{{base},"IPv6Network":"fc00::/48","IPv6SubnetLen":127}}"#
        )),
        "SubnetLen must be less than /127"
    );
    assert_eq!(
        err(&format!(
            r#"{{{base},"IPv6Network":"fc00::/48","IPv6SubnetLen":49}}"#
        )),
        "network must be able to accommodate at least four subnets"
    );
    assert_eq!(
        err(&format!(
            r#"{{{base},"IPv6Network":"fc00::/48","IPv6SubnetMin":"fd00::"}}"#
        )),
        "IPv6SubnetMin is not in the range of the IPv6Network"
    );
    assert_eq!(
        err(&format!(
            r#"{{{base},"IPv6Network":"fc00::/48","IPv6SubnetMax":"fc00:0:0:1::8"}}"#
        )),
        "IPv6SubnetMax is not on a SubnetLen boundary: fc00:0:0:1::8"
    );
    assert_eq!(
        v6(&format!(r#"{{{base},"IPv6Network":"fc00::/120"}}"#)).subnet_len,
        122
    );
}

#[test]
fn backend_type_forms() {
    assert_eq!(
        check(r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#)
            .unwrap()
            .backend_type,
        "vxlan"
    );
    assert_eq!(
        check(r#"{"Network":"10.0.0.0/8","backend":{"type":"host-gw"}}"#)
            .unwrap()
            .backend_type,
        "host-gw"
    );
    assert_eq!(
        check(r#"{"Network":"10.0.0.0/8","Backend":{}}"#)
            .unwrap()
            .backend_type,
        ""
    );
    assert_eq!(
        check(r#"{"Network":"10.0.0.0/8","Backend":null}"#)
            .unwrap()
            .backend_type,
        ""
    );
    assert!(err(r#"{"Network":"10.0.0.0/8","Backend":"vxlan"}"#)
        .starts_with("error decoding Backend property of config: "));
    assert!(err(r#"{"Network":"10.0.0.0/8","Backend":{"Type":3}}"#)
        .starts_with("error decoding Backend property of config: Type: expected a string"));
}

#[test]
fn bad_input_names_the_field() {
    assert_eq!(
        err(r#"{"Network":"10.3.0.5/16"}"#),
        "net config field Network: \"10.3.0.5/16\" has host bits set (did you mean 10.3.0.0/16?)"
    );
    assert_eq!(
        err(r#"{"Network":"10.3.0.0/16","SubnetLen":-1}"#),
        "net config field SubnetLen: expected a non-negative integer, found -1"
    );
    assert_eq!(
        err(r#"{"Network":"fc00::/48"}"#),
        "net config field Network: \"fc00::/48\" is not an IPv4 network"
    );
    assert_eq!(
        err(r#"{"Network":"10.3.0.0/16","EnableIPv6":"yes"}"#),
        "net config field EnableIPv6: expected a boolean, found \"yes\""
    );
    assert!(err("{\"Network\": ").starts_with("net config: malformed JSON at line 1"));
    assert_eq!(
        err("[]"),
        "net config must be a JSON object, found an array"
    );
    assert_eq!(
        err(r#"{"Network":"10.3.0.0/16","SubnetMin":"10.3.9.0","SubnetMax":"10.3.2.0"}"#),
        "SubnetMin (10.3.9.0) is greater than SubnetMax (10.3.2.0): no subnet can be allocated"
    );
}

#[test]
fn unknown_keys_ignored_and_null_keeps_default() {
    let c = check(r#"{"Network":"10.0.0.0/8","Whatever":[1],"EnableIPv4":null}"#).unwrap();
    assert!(c.enable_ipv4());
}

#[test]
fn both_address_families_off_is_an_error() {
    assert_eq!(
        err(r#"{"EnableIPv4":false,"EnableIPv6":false,"Network":"10.0.0.0/8"}"#),
        "EnableIPv4 and EnableIPv6 are both false: at least one address family must be enabled"
    );
}

#[test]
fn effective_json_fills_defaults_and_redacts() {
    let c = check(
        r#"{"Network":"10.3.0.0/16","Backend":{"Type":"tencent-vpc","AccessKeyID":"AKID1","AccessKeySecret":"s3cr3t"}}"#,
    )
    .unwrap();
    let out = c.effective_json().to_string();
    assert_eq!(
        out,
        r#"{"EnableIPv4":true,"EnableIPv6":false,"EnableNFTables":false,"Network":"10.3.0.0/16","SubnetLen":24,"SubnetMin":"10.3.1.0","SubnetMax":"10.3.255.0","BackendType":"tencent-vpc","Backend":{"Type":"tencent-vpc","AccessKeyID":"AKID1","AccessKeySecret":"<redacted>"}}"#
    );
    assert!(!out.contains("s3cr3t"));
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("s3cr3t") && dbg.contains("AKID1"), "{dbg}");
}
