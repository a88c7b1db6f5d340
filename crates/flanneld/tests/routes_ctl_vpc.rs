//! `flannelctl routes plan|gc` and `config check --cloud` against etcd and the emulator.

use flanneld_testing::EtcdServer;
use serde_json::{json, Value};
use std::process::{Command, Output};
use tencent_vpc_emulator::scenario::Scenario;
use tencent_vpc_emulator::{Emulator, EmulatorConfig};

const FLANNELCTL: &str = env!("CARGO_BIN_EXE_flannelctl");
const ID: &str = "AKIDlab0000000000000000000000000000";
const KEY: &str = "lab-secret-key-0000000000000000";

async fn emulator() -> Emulator {
    let s = Scenario::from_json(include_str!(
        "../../tencent-vpc-emulator/scenarios/lab.json"
    ))
    .unwrap();
    Emulator::start(EmulatorConfig {
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..EmulatorConfig::on_loopback(s)
    })
    .await
    .unwrap()
}

fn config(emu: &Emulator, network: &str) -> String {
    json!({"Network": network, "Backend": {"Type": "tencent-vpc", "AccessKeyID": ID, "AccessKeySecret": KEY,
        "Endpoint": format!("http://{}", emu.api), "VpcId": "vpc-lab", "Region": "ap-guangzhou"}})
    .to_string()
}

async fn ctl(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(FLANNELCTL)
            .args(&args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

async fn admin(emu: &Emulator, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let mut req =
        reqwest::Client::new().request(method, format!("http://{}{path}", emu.admin.unwrap()));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    assert!(r.status().is_success());
    r.json().await.unwrap_or(Value::Null)
}

async fn writes(emu: &Emulator) -> u64 {
    let calls = admin(emu, reqwest::Method::GET, "/calls", None).await;
    [
        "CreateRoutes",
        "DeleteRoutes",
        "ReplaceRoutes",
        "EnableRoutes",
    ]
    .iter()
    .filter_map(|a| calls.get(*a))
    .flat_map(|o| o.as_object().unwrap().values())
    .map(|v| v.as_u64().unwrap())
    .sum()
}

/// A route the user adds in the console.
async fn add_route(emu: &Emulator, table: &str, route: Value) {
    admin(
        emu,
        reqwest::Method::POST,
        &format!("/route-tables/{table}/routes"),
        Some(route),
    )
    .await;
}

/// `routes plan`: succeeds, prints every line of `lines` (among others) and writes nothing.
async fn plan_prints(emu: &Emulator, etcd_arg: &str, lines: &[&str]) -> String {
    let out = ctl(vec!["routes".into(), "plan".into(), etcd_arg.into()]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for line in lines {
        assert!(stdout.lines().any(|l| l == *line), "{line:?} in:\n{stdout}");
    }
    assert_eq!(writes(emu).await, 0, "plan writes nothing");
    stdout
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn plan_prints_without_writing_and_gc_removes_only_our_orphans() {
    let emu = emulator().await;
    let etcd = EtcdServer::start();
    etcd.etcdctl(&[
        "put",
        "/coreos.com/network/config",
        &config(&emu, "10.244.0.0/16"),
    ]);
    for (subnet, ip, sn) in [
        ("10.244.1.0-24", "172.16.1.7", "subnet-a"),
        ("10.244.2.0-24", "172.16.2.7", "subnet-b"),
    ] {
        etcd.etcdctl(&[
            "put",
            &format!("/coreos.com/network/subnets/{subnet}"),
            &json!({"PublicIP": ip, "PublicIPv6": null, "BackendType": "tencent-vpc",
                    "BackendData": {"PrivateIP": ip, "SubnetId": sn}})
            .to_string(),
        ]);
    }
    // An orphan of ours (its node left) and a user's route.
    for route in [
        json!({"DestinationCidrBlock": "10.244.50.0/24", "GatewayType": "NORMAL_CVM", "GatewayId": "172.16.1.8",
               "RouteDescription": "flannel:10-244-0-0-16:172.16.1.8"}),
        json!({"DestinationCidrBlock": "10.244.60.0/24", "GatewayType": "NAT", "GatewayId": "nat-1"}),
    ] {
        add_route(&emu, "rtb-main", route).await;
    }
    let etcd_arg = format!("--etcd-endpoints={}", etcd.endpoint());

    plan_prints(
        &emu,
        &etcd_arg,
        &[
            "tables: rtb-b, rtb-main (routes per table: 50)",
            "rtb-main: create 10.244.1.0/24 via 172.16.1.7 (flannel:10-244-0-0-16:172.16.1.7)",
            "rtb-main: create 10.244.2.0/24 via 172.16.2.7 (flannel:10-244-0-0-16:172.16.2.7)",
            "rtb-b: create 10.244.1.0/24 via 172.16.1.7 (flannel:10-244-0-0-16:172.16.1.7)",
        ],
    )
    .await;

    let out = ctl(vec![
        "routes".into(),
        "gc".into(),
        "--dry-run".into(),
        etcd_arg.clone(),
    ])
    .await;
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    let orphan = stdout
        .lines()
        .find(|l| l.starts_with("would delete"))
        .unwrap()
        .to_string();
    assert!(
        orphan.ends_with(": 10.244.50.0/24 via 172.16.1.8"),
        "{stdout}"
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("would delete"))
            .count(),
        1,
        "{stdout}"
    );
    assert_eq!(writes(&emu).await, 0, "a dry run writes nothing");

    let out = ctl(vec!["routes".into(), "gc".into(), etcd_arg.clone()]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("deleted 1 routes"), "{stdout}");
    let state = admin(&emu, reqwest::Method::GET, "/state", None).await;
    let dests: Vec<&str> = state["route_tables"][0]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["destination_cidr_block"].as_str().unwrap())
        .collect();
    assert!(
        !dests.contains(&"10.244.50.0/24") && dests.contains(&"10.244.60.0/24"),
        "{dests:?}"
    );

    // Uninstall lists every route of ours, and nothing else.
    let out = ctl(vec![
        "routes".into(),
        "gc".into(),
        "--all-ours".into(),
        "--dry-run".into(),
        etcd_arg,
    ])
    .await;
    let (stdout, _) = text(&out);
    assert_eq!(stdout.trim(), "nothing to delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn refused_leases_are_shown_and_strays_outside_the_network_go_on_the_operators_word() {
    let emu = emulator().await;
    let etcd = EtcdServer::start();
    etcd.etcdctl(&[
        "put",
        "/coreos.com/network/config",
        &config(&emu, "10.244.0.0/16"),
    ]);
    let lease = |ip: &str| {
        json!({"PublicIP": ip, "PublicIPv6": null, "BackendType": "tencent-vpc",
                "BackendData": {"PrivateIP": ip, "SubnetId": "subnet-a"}})
        .to_string()
    };
    for (key, ip) in [
        ("10.244.1.0-24", "172.16.1.7"),
        ("0.0.0.0-1", "172.16.1.7"),
        ("192.168.100.0-24", "172.16.1.8"),
        ("10.244.3.0-24", "8.8.8.8"),
    ] {
        etcd.etcdctl(&[
            "put",
            &format!("/coreos.com/network/subnets/{key}"),
            &lease(ip),
        ]);
    }
    // What an earlier version wrote for such leases: tagged as ours, outside the Network.
    let tag = |ip: &str| format!("flannel:10-244-0-0-16:{ip}");
    // (172.16.2.7 holds no lease: its stray waits for the operator.)
    for (dest, via) in [("0.0.0.0/1", "172.16.1.7"), ("172.31.0.0/24", "172.16.2.7")] {
        let route = json!({"DestinationCidrBlock": dest, "GatewayType": "NORMAL_CVM",
                           "GatewayId": via, "RouteDescription": tag(via)});
        add_route(&emu, "rtb-main", route).await;
    }
    let etcd_arg = format!("--etcd-endpoints={}", etcd.endpoint());

    let stdout = plan_prints(
        &emu,
        &etcd_arg,
        &[
            "refused lease 0.0.0.0-1: IPv4 subnet 0.0.0.0/1 covers the Network 10.244.0.0/16: a lease must be a subnet inside it",
            "refused lease 10.244.3.0-24: PrivateIP 8.8.8.8 is not inside the VPC (172.16.0.0/16)",
            "refused lease 192.168.100.0-24: IPv4 subnet 192.168.100.0/24 is not inside the Network 10.244.0.0/16",
            "rtb-main: create 10.244.1.0/24 via 172.16.1.7 (flannel:10-244-0-0-16:172.16.1.7)",
        ],
    )
    .await;
    assert!(!stdout.contains("create 0.0.0.0/1") && !stdout.contains("create 192.168"));

    // The stray via a lease holder goes with a plain gc; the other only on the operator's
    // word.
    let out = ctl(vec![
        "routes".into(),
        "gc".into(),
        "--all-ours".into(),
        "--dry-run".into(),
        etcd_arg.clone(),
    ])
    .await;
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("2 routes of ours lie outside the Network via no lease holder: add --outside-network to delete them"),
        "{stdout}"
    );
    let out = ctl(vec![
        "routes".into(),
        "gc".into(),
        "--dry-run".into(),
        etcd_arg.clone(),
    ])
    .await;
    let (stdout, _) = text(&out);
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("would delete"))
        .collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(
        lines[0].ends_with(": 0.0.0.0/1 via 172.16.1.7 (outside the Network)"),
        "{stdout}"
    );
    let out = ctl(vec![
        "routes".into(),
        "gc".into(),
        "--all-ours".into(),
        "--outside-network".into(),
        etcd_arg,
    ])
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("deleted 2 routes"), "{stdout}");
    let state = admin(&emu, reqwest::Method::GET, "/state", None).await;
    let dests: Vec<&str> = state["route_tables"][0]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["destination_cidr_block"].as_str().unwrap())
        .collect();
    assert!(
        !dests.contains(&"0.0.0.0/1") && !dests.contains(&"172.31.0.0/24"),
        "{dests:?}"
    );
    assert!(
        dests.contains(&"192.168.100.0/24"),
        "the user's VPN route stays: {dests:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn config_check_cloud_is_a_preflight() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(&good, config(&emu, "10.244.0.0/16")).unwrap();
    let before = admin(&emu, reqwest::Method::GET, "/state", None).await;
    let out = ctl(vec![
        "config".into(),
        "check".into(),
        good.display().to_string(),
        "--cloud".into(),
    ])
    .await;
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for line in [
        "ok   credentials accepted (DescribeVpcs)",
        "ok   Network 10.244.0.0/16 is outside every VPC CIDR of vpc-lab",
        "ok   rtb-main: 1/50 routes used, room for 49 more (leases now: 1)",
        "ok   permission for DescribeVpcLimits (the route quota)",
        "ok   permission for CreateRoutes",
        "ok   permission for EnableRoutes",
    ] {
        assert!(stderr.lines().any(|l| l == line), "{line:?} in:\n{stderr}");
    }
    assert_eq!(
        admin(&emu, reqwest::Method::GET, "/state", None).await,
        before,
        "the permission probes change nothing"
    );
    let calls = admin(&emu, reqwest::Method::GET, "/calls", None).await;
    assert!(calls["CreateRoutes"].get("Success").is_none(), "{calls}");

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, config(&emu, "172.16.0.0/12")).unwrap();
    let out = ctl(vec![
        "config".into(),
        "check".into(),
        bad.display().to_string(),
        "--cloud".into(),
    ])
    .await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("FAIL Network 172.16.0.0/12 overlaps VPC CIDR 172.16.0.0/16 of vpc-lab: pod routes there are refused"),
        "{stderr}"
    );
}
