//! Property-based fuzzing of the parsers that take outside input: net-conf.json, lease
//! values and subnet keys (etcd is shared with other writers, upstream flanneld included).
//! Inputs are arbitrary text and JSON built from the fields each parser knows, with values
//! of every type. Properties: no panic, and whatever is accepted round-trips. Bounded by the
//! case counts below (a few seconds in CI). proptest records the seed of any failure in
//! `tests/proptest-regressions/parser_fuzz.txt` (commit it: it is replayed first), and each
//! failure found so far is also a named test at the end of this file.

use flannel_core::config::{parse_and_check, RawNetConfig};
use flannel_core::lease::{LeaseAttrs, SubnetKey};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Strings an attacker or a typo would put in a field.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("10.244.0.0/16".to_string()),
        Just("10.244.1.0".to_string()),
        Just("0.0.0.0/0".to_string()),
        Just("::/0".to_string()),
        Just("fd00::/48".to_string()),
        Just("255.255.255.255/32".to_string()),
        Just("vxlan".to_string()),
        Just("tencent-vpc".to_string()),
        "[0-9./:a-f-]{0,24}",
        any::<String>(),
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (0u64..200).prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An object whose keys are drawn from `known` (plus a stray one now and then).
fn object_of(known: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::collection::vec(
        (
            prop_oneof![
                9 => prop::sample::select(known).prop_map(str::to_string),
                1 => "[A-Za-z]{1,12}",
            ],
            json_value(),
        ),
        0..known.len() + 2,
    )
    .prop_map(|kvs| Value::Object(kvs.into_iter().collect::<Map<_, _>>()))
}

const NET_CONF_FIELDS: &[&str] = &[
    "Network",
    "SubnetLen",
    "SubnetMin",
    "SubnetMax",
    "EnableIPv4",
    "EnableIPv6",
    "IPv6Network",
    "IPv6SubnetLen",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "EnableNFTables",
    "Backend",
];

const LEASE_FIELDS: &[&str] = &[
    "PublicIP",
    "PublicIPv6",
    "BackendType",
    "BackendData",
    "BackendV6Data",
];

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 3000,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "tests/proptest-regressions/parser_fuzz.txt",
            ),
        )),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn net_conf_text_never_panics(s in any::<String>()) {
        let _ = parse_and_check(&s);
    }

    #[test]
    fn net_conf_accepted_is_consistent_and_round_trips(conf in object_of(NET_CONF_FIELDS)) {
        let text = conf.to_string();
        if let Ok(c) = RawNetConfig::parse(&text).and_then(|r| r.check()) {
            prop_assert!(c.ipv4.is_some() || c.ipv6.is_some(), "{text}");
            if let Some(p) = c.ipv4 {
                prop_assert!(p.subnet_min <= p.subnet_max, "{text}");
                prop_assert!(p.network.contains(&p.subnet_min) && p.network.contains(&p.subnet_max), "{text}");
            }
            if let Some(p) = c.ipv6 {
                prop_assert!(p.subnet_min <= p.subnet_max, "{text}");
                prop_assert!(p.network.contains(&p.subnet_min) && p.network.contains(&p.subnet_max), "{text}");
            }
            // What `config check` prints is itself a valid config, and the same one.
            let effective = c.effective_json().to_string();
            let again = parse_and_check(&effective);
            prop_assert!(again.is_ok(), "{text} -> {effective}: {:?}", again.err());
            let again = again.unwrap();
            prop_assert_eq!(again.ipv4, c.ipv4);
            prop_assert_eq!(again.ipv6, c.ipv6);
        }
    }

    #[test]
    fn lease_values_never_panic_and_round_trip(v in prop_oneof![object_of(LEASE_FIELDS), json_value()]) {
        let text = v.to_string();
        if let Ok(attrs) = LeaseAttrs::from_json(&text) {
            let again = LeaseAttrs::from_json(&attrs.to_json());
            prop_assert_eq!(again.ok(), Some(attrs), "{}", text);
        }
    }

    #[test]
    fn lease_value_text_never_panics(s in any::<String>()) {
        let _ = LeaseAttrs::from_json(&s);
    }

    #[test]
    fn subnet_keys_never_panic_and_round_trip(
        s in prop_oneof![
            "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}-[0-9]{1,3}",
            "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}-[0-9]{1,2}&[0-9a-f:]{2,20}-[0-9]{1,3}",
            any::<String>(),
        ]
    ) {
        if let Ok(k) = s.parse::<SubnetKey>() {
            prop_assert_eq!(k.to_string().parse::<SubnetKey>().ok(), Some(k), "{}", s);
        }
    }
}

// Regressions found by the properties above.

/// serde_json without `float_roundtrip` printed a float that parsed back as another.
#[test]
fn a_float_in_backend_data_survives_a_round_trip() {
    let text = r#"{"BackendData":[-5.509370058021104e+245]}"#;
    let attrs = LeaseAttrs::from_json(text).unwrap();
    assert_eq!(LeaseAttrs::from_json(&attrs.to_json()).unwrap(), attrs);
}

/// A key with host bits (accepted, as upstream's parser does) printed as another key, so
/// renewing or deleting it would have named an etcd key that does not exist.
#[test]
fn a_subnet_key_with_host_bits_names_itself() {
    let k: SubnetKey = "0.0.0.1-0".parse().unwrap();
    assert_eq!(k.to_string(), "0.0.0.1-0");
    let k: SubnetKey = "10.5.1.5-24&fd00::1-64".parse().unwrap();
    assert_eq!(k.to_string(), "10.5.1.5-24&fd00::1-64");
}
