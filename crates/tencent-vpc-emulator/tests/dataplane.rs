//! The data plane in real network namespaces (needs root; CI runs as root): a router
//! namespace mirrors the route tables, two hosts sit in two subnets with two tables, each
//! with a pod address (10.244.1.1 on a, 10.244.2.1 on b) that is never masqueraded.

use std::process::Command;
use tencent_vpc_emulator::scenario::Scenario;
use tencent_vpc_emulator::{Emulator, EmulatorConfig};

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("running a command");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Three namespaces: router r, host a (subnet-a, 172.16.1.7, pod 10.244.1.1), host b
/// (subnet-b, 172.16.2.7, pod 10.244.2.1). Removed on drop.
struct Lab {
    r: String,
    a: String,
    b: String,
}

impl Lab {
    fn new() -> Lab {
        // Unique per test in this process (tests run in parallel).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let lab = Lab {
            r: format!("emu-r-{id}"),
            a: format!("emu-a-{id}"),
            b: format!("emu-b-{id}"),
        };
        for ns in [&lab.r, &lab.a, &lab.b] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let r = lab.r.as_str();
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            sh(&[
                "ip",
                "netns",
                "exec",
                r,
                "sysctl",
                "-qw",
                &format!("{key}={value}"),
            ]);
        }
        for (host, rif, hif, net) in [(&lab.a, "ra", "a0", "1"), (&lab.b, "rb", "b0", "2")] {
            sh(&[
                "ip", "-n", r, "link", "add", rif, "type", "veth", "peer", "name", hif, "netns",
                host,
            ]);
            sh(&[
                "ip",
                "-n",
                r,
                "addr",
                "add",
                &format!("172.16.{net}.1/24"),
                "dev",
                rif,
            ]);
            sh(&["ip", "-n", r, "link", "set", rif, "up"]);
            sh(&[
                "ip",
                "-n",
                host,
                "addr",
                "add",
                &format!("172.16.{net}.7/24"),
                "dev",
                hif,
            ]);
            sh(&["ip", "-n", host, "link", "set", hif, "up"]);
            sh(&[
                "ip",
                "-n",
                host,
                "route",
                "add",
                "default",
                "via",
                &format!("172.16.{net}.1"),
            ]);
        }
        for (host, pod) in [(&lab.a, "10.244.1.1/32"), (&lab.b, "10.244.2.1/32")] {
            sh(&["ip", "-n", host, "addr", "add", pod, "dev", "lo"]);
        }
        lab
    }

    /// One ping from a pod address in `from` to `to` (both ways through the router).
    fn pod_reaches_pod(&self, from: &str, src: &str, to: &str) -> bool {
        Command::new("ip")
            .args([
                "netns", "exec", from, "ping", "-c", "1", "-W", "1", "-I", src, to,
            ])
            .output()
            .expect("ping")
            .status
            .success()
    }

    /// One ping from host a to b's pod address.
    fn a_reaches_pod(&self) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.a,
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                "10.244.2.1",
            ])
            .output()
            .expect("ping")
            .status
            .success()
    }
}

impl Lab {
    /// The emulator with the lab scenario, its data plane in the router namespace.
    async fn emulator(&self) -> Emulator {
        Emulator::start(EmulatorConfig {
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
            dataplane_netns: Some(self.r.clone()),
            ..EmulatorConfig::on_loopback(
                Scenario::from_json(include_str!("../scenarios/lab.json")).unwrap(),
            )
        })
        .await
        .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.r, &self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run with --include-ignored"]
async fn pod_route_only_works_in_the_right_table() {
    let lab = Lab::new();
    let emu = lab.emulator().await;
    let admin = |path: &str| format!("http://{}{path}", emu.admin.unwrap());
    let http = reqwest::Client::new();
    let route = serde_json::json!({"DestinationCidrBlock": "10.244.2.0/24", "GatewayType": "NORMAL_CVM", "GatewayId": "172.16.2.7"});

    // The router's link into subnet-a selects the main table's Linux table, b's link rtb-b's.
    let rules = String::from_utf8(
        Command::new("ip")
            .args(["-n", &lab.r, "rule", "show"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        rules.contains("iif ra lookup 1000") && rules.contains("iif rb lookup 1001"),
        "{rules}"
    );
    assert!(!lab.a_reaches_pod(), "no route yet");

    // In b's own table (rtb-b) only: a's traffic is looked up in rtb-main and blackholes.
    let r = http
        .post(admin("/route-tables/rtb-b/routes"))
        .json(&route)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert!(
        !lab.a_reaches_pod(),
        "a route in the wrong table must not carry traffic"
    );

    // In a's table: reachable, as soon as the call has answered.
    let r: serde_json::Value = http
        .post(admin("/route-tables/rtb-main/routes"))
        .json(&route)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = r["RouteTableSet"][0]["RouteSet"][0]["RouteId"]
        .as_u64()
        .unwrap();
    let table = String::from_utf8(
        Command::new("ip")
            .args(["-n", &lab.r, "route", "show", "table", "1000"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(table.contains("10.244.2.0/24 via 172.16.2.7"), "{table}");
    assert!(
        lab.a_reaches_pod(),
        "a route in the right table carries traffic"
    );

    // Disabled in the console: gone from the data plane.
    let r = http
        .post(admin(&format!(
            "/route-tables/rtb-main/routes/{id}/disable"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!lab.a_reaches_pod(), "a disabled route carries nothing");
    let r = http
        .post(admin(&format!("/route-tables/rtb-main/routes/{id}/enable")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(lab.a_reaches_pod());
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run with --include-ignored"]
async fn pod_to_pod_traffic_is_routed_by_the_table_of_the_subnet_it_comes_from() {
    let lab = Lab::new();
    let emu = lab.emulator().await;
    let http = reqwest::Client::new();
    let add = |table: &str, dest: &str, gw: &str| {
        let req = http
            .post(format!(
                "http://{}/route-tables/{table}/routes",
                emu.admin.unwrap()
            ))
            .json(&serde_json::json!({"DestinationCidrBlock": dest, "GatewayType": "NORMAL_CVM", "GatewayId": gw}));
        async move { assert_eq!(req.send().await.unwrap().status(), 200) }
    };
    let a_to_b = || lab.pod_reaches_pod(&lab.a, "10.244.1.1", "10.244.2.1");
    let b_to_a = || lab.pod_reaches_pod(&lab.b, "10.244.2.1", "10.244.1.1");
    // Each subnet's table knows the other node's pods: the request goes out through a's
    // table (rtb-main), the reply through b's (rtb-b).
    add("rtb-main", "10.244.2.0/24", "172.16.2.7").await;
    assert!(!a_to_b(), "the reply has no route in rtb-b yet");
    add("rtb-b", "10.244.1.0/24", "172.16.1.7").await;
    assert!(a_to_b(), "pod a -> pod b, sourced from the pod address");
    assert!(b_to_a(), "pod b -> pod a");
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run with --include-ignored"]
async fn a_lagging_data_plane_lists_routes_before_it_forwards_them() {
    let lab = Lab::new();
    let emu = lab.emulator().await;
    let admin = |path: &str| format!("http://{}{path}", emu.admin.unwrap());
    let http = reqwest::Client::new();
    let lag = |body: serde_json::Value| {
        let req = http.post(admin("/dataplane-lag")).json(&body);
        async move { assert_eq!(req.send().await.unwrap().status(), 204) }
    };
    let add = |table: &str, dest: &str, gw: &str| {
        let req = http
            .post(admin(&format!("/route-tables/{table}/routes")))
            .json(&serde_json::json!({"DestinationCidrBlock": dest, "GatewayType": "NORMAL_CVM", "GatewayId": gw}));
        async move { assert_eq!(req.send().await.unwrap().status(), 200) }
    };
    let get = |path: &str| {
        let req = http.get(admin(path));
        async move {
            req.send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let listed = || async {
        let s = get("/state").await;
        s["route_tables"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|t| t["routes"].as_array().unwrap().clone())
            .count()
    };
    let a_to_b = || lab.pod_reaches_pod(&lab.a, "10.244.1.1", "10.244.2.1");

    // Never: both routes listed, nothing forwarded until the fault is cleared.
    let r = http
        .post(admin("/dataplane-lag"))
        .json(&serde_json::json!({"delay_ms": 5, "never": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "either a delay or never");
    let before = listed().await;
    lag(serde_json::json!({"never": true})).await;
    add("rtb-main", "10.244.2.0/24", "172.16.2.7").await;
    add("rtb-b", "10.244.1.0/24", "172.16.1.7").await;
    assert_eq!(listed().await, before + 2);
    assert!(!a_to_b(), "listed, not forwarded");
    let r = http.delete(admin("/dataplane-lag")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(a_to_b(), "forwarded once the data plane caught up");

    // A delay: a change forwards that long after the call answered, and in order.
    lag(serde_json::json!({"delay_ms": 1500})).await;
    assert_eq!(get("/dataplane-lag").await["delay_ms"], 1500);
    let table = |id: &str| {
        String::from_utf8(
            Command::new("ip")
                .args(["-n", &lab.r, "route", "show", "table", id])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
    };
    let started = std::time::Instant::now();
    add("rtb-main", "10.244.9.0/24", "172.16.1.7").await;
    assert!(!table("1000").contains("10.244.9.0/24"), "not at once");
    let deadline = started + std::time::Duration::from_secs(10);
    while !table("1000").contains("10.244.9.0/24") {
        assert!(std::time::Instant::now() < deadline, "never forwarded");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_millis(1400), "{took:?}");
    assert!(a_to_b(), "the earlier routes stay");
}
