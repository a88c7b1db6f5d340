use super::*;
use std::collections::HashMap;

fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Options, clap::Error> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let argv = std::iter::once("flanneld")
        .chain(args.iter().copied())
        .map(OsString::from);
    Options::parse_with_env(argv, |k| env.get(k).cloned())
}

#[test]
fn upstream_defaults() {
    let o = parse(&[], &[]).unwrap();
    assert_eq!(
        o.etcd.etcd_endpoints,
        "http://127.0.0.1:4001,http://127.0.0.1:2379"
    );
    assert_eq!(o.etcd.etcd_prefix, "/coreos.com/network");
    assert_eq!(o.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
    assert_eq!(o.subnet_lease_renew_margin, 60);
    assert_eq!(o.kube.kube_annotation_prefix, "flannel.alpha.coreos.com");
    assert_eq!(
        o.kube.net_config_path,
        PathBuf::from("/etc/kube-flannel/net-conf.json")
    );
    assert!(o.set_node_network_unavailable);
    assert!(!o.ip_masq);
    assert!(o.iptables_forward_rules);
    assert_eq!(o.iptables_resync, 5);
    assert_eq!(o.healthz_ip, "0.0.0.0".parse::<IpAddr>().unwrap());
    assert_eq!(o.healthz_port, 0);
    assert!(!o.kube.kube_subnet_mgr);
}

#[test]
fn go_single_dash_and_double_dash_parse_identically() {
    let a = parse(&["-iface=x"], &[]).unwrap();
    let b = parse(&["--iface", "x"], &[]).unwrap();
    let c = parse(&["-iface", "x"], &[]).unwrap();
    assert_eq!(a.iface, vec!["x"]);
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert_eq!(format!("{a:?}"), format!("{c:?}"));
}

#[test]
fn env_is_ignored_when_flag_given() {
    let o = parse(&["--iface", "eth1"], &[("FLANNELD_IFACE", "eth9")]).unwrap();
    assert_eq!(o.iface, vec!["eth1"]);
    let o = parse(&[], &[("FLANNELD_IFACE", "eth9")]).unwrap();
    assert_eq!(o.iface, vec!["eth9"]);
    // A repeatable flag from the environment is one value, commas and all.
    let o = parse(&[], &[("FLANNELD_IFACE", "eth9,eth8")]).unwrap();
    assert_eq!(o.iface, vec!["eth9,eth8"]);
}

#[test]
fn empty_env_value_is_ignored() {
    let o = parse(&[], &[("FLANNELD_ETCD_PREFIX", "")]).unwrap();
    assert_eq!(o.etcd.etcd_prefix, "/coreos.com/network");
    let o = parse(
        &[],
        &[("FLANNELD_ETCD_PREFIX", "/x"), ("FLANNELD_IP_MASQ", "true")],
    )
    .unwrap();
    assert_eq!(o.etcd.etcd_prefix, "/x");
    assert!(o.ip_masq);
}

#[test]
fn go_bool_flags() {
    assert!(parse(&["-ip-masq"], &[]).unwrap().ip_masq);
    assert!(parse(&["--ip-masq=true"], &[]).unwrap().ip_masq);
    assert!(!parse(&["-ip-masq=false"], &[]).unwrap().ip_masq);
    assert!(
        !parse(&["--iptables-forward-rules=0"], &[])
            .unwrap()
            .iptables_forward_rules
    );
    assert!(parse(&["--ip-masq=maybe"], &[]).is_err());
}

#[test]
fn unknown_flag_is_an_error_naming_it() {
    let e = parse(&["--no-such-flag"], &[]).unwrap_err();
    assert!(e.to_string().contains("--no-such-flag"), "{e}");
    assert_eq!(e.exit_code(), 2);
}

#[test]
fn repeatable_and_klog_flags() {
    let o = parse(
        &["-iface=eth0", "-iface=10.0.0.1", "-v=3", "-iface-regex=^en"],
        &[],
    )
    .unwrap();
    assert_eq!(o.iface, vec!["eth0", "10.0.0.1"]);
    assert_eq!(o.verbosity, 3);
    assert_eq!(o.iface_regex, vec!["^en"]);
}

#[test]
fn lease_ttl_range_and_the_margin_is_at_most_half_of_it() {
    let o = parse(&[], &[]).unwrap();
    assert_eq!(
        (o.lease_ttl(), o.renew_margin()),
        (Duration::from_secs(86400), Duration::from_secs(3600))
    );
    let o = parse(&[], &[("FLANNELD_SUBNET_LEASE_TTL", "30")]).unwrap();
    o.validate().unwrap();
    assert_eq!(
        (o.lease_ttl(), o.renew_margin()),
        (Duration::from_secs(30), Duration::from_secs(15))
    );
    for bad in ["9", "604801", "-5"] {
        let e = parse(&[&format!("--subnet-lease-ttl={bad}")], &[])
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("invalid --subnet-lease-ttl {bad}: must be between 10 and 604800 seconds")
        );
    }
}

#[test]
fn renew_margin_range() {
    assert!(parse(&["--subnet-lease-renew-margin=0"], &[])
        .unwrap()
        .validate()
        .is_err());
    assert!(parse(&["--subnet-lease-renew-margin=1440"], &[])
        .unwrap()
        .validate()
        .is_err());
    assert!(parse(&["--subnet-lease-renew-margin=1439"], &[])
        .unwrap()
        .validate()
        .is_ok());
    assert!(parse(&["--iface-regex=("], &[])
        .unwrap()
        .validate()
        .is_err());
}

#[test]
fn periods_are_bounded_and_the_error_names_the_flag() {
    for (flag, bad) in [
        ("iptables-resync", "18446744073709551615"),
        ("iptables-resync", "0"),
        ("iptables-resync", "3601"),
        ("resync-period", "18446744073709551615"),
        ("resync-period", "0"),
    ] {
        let e = parse(&[&format!("--{flag}={bad}")], &[])
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("invalid --{flag} {bad}: must be between 1 and 3600 seconds")
        );
    }
    parse(&["--iptables-resync=3600", "--resync-period=1"], &[])
        .unwrap()
        .validate()
        .unwrap();
}

#[test]
fn password_never_in_debug() {
    let o = parse(&["--etcd-password=hunter2"], &[]).unwrap();
    assert!(!format!("{o:?}").contains("hunter2"));
    let o = parse(&["--etcd-endpoints=https://root:hunter4@etcd:2379"], &[]).unwrap();
    let dbg = format!("{o:?}");
    assert!(
        !dbg.contains("hunter4") && dbg.contains("https://<redacted>@etcd:2379"),
        "{dbg}"
    );
    let o = parse(&[], &[("FLANNELD_ETCD_PASSWORD", "hunter3")]).unwrap();
    assert!(o.etcd.etcd_password.is_some());
    assert!(!format!("{o:?}").contains("hunter3"));
}
