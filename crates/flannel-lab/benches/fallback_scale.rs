//! tencent-vpc with `"Fallback": "vxlan"` past the route quota: NODES nodes (200) in the lab
//! against a quota of QUOTA routes per table (50), all started together. Measures the time
//! from the first flanneld start until node-1's pod and every other pod reach each other, the
//! API calls that took, the split, and pod-to-pod throughput (iperf3, TCP, one stream, RUNS
//! interleaved runs of SECS s) of a routed pair and a fallback pair against a plain routed
//! baseline (node to node across the VPC router) in the same run. Root only.
//!
//! `cargo build --release -p flanneld -p tencent-vpc-emulator && cargo bench -p flannel-lab --bench fallback_scale`

use flannel_lab::lab::{self, Reach};
use flannel_lab::measure::{env_or, fresh_lab, iperf3_gbps, median, total_calls};
use flannel_lab::netns::Netns;
use flannel_lab::topology::{Backend, LabSpec, Mode, NodeSpec};
use std::path::Path;
use std::process::{Child, Stdio};

const PREFIX: &str = "lscale";

fn iperf_server(ns: &str) -> Child {
    Netns::named(ns)
        .command("iperf3")
        .args(["-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let nodes = env_or("NODES", 200) as u8;
    let quota = env_or("QUOTA", 50) as usize;
    let runs = env_or("RUNS", 3) as usize;
    let secs = env_or("SECS", 5);
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_flannel-lab"))
        .parent()
        .unwrap()
        .to_path_buf();
    let spec = LabSpec {
        prefix: PREFIX.into(),
        backend: Backend::TencentVpc,
        mode: Mode::PerNode,
        route_quota: quota,
        fallback: true,
        kube: false,
    };
    let lab = fresh_lab(spec, nodes, bin_dir, Reach::FromFirst);
    let converged = lab.state.converged_secs.unwrap_or_default();
    let by_action = lab.calls().unwrap();
    let calls = total_calls(&by_action);

    // The split as the tables show it: which leases have routes.
    let cloud = lab.cloud().unwrap();
    let routed: Vec<String> = cloud
        .route_tables
        .iter()
        .find(|t| t.route_table_id == "rtb-b")
        .map(|t| {
            t.routes
                .iter()
                .map(|r| r.destination_cidr_block.to_string())
                .collect()
        })
        .unwrap_or_default();
    let all: Vec<NodeSpec> = lab.nodes();
    let is_routed = |n: &NodeSpec| lab.lease_of(n).is_some_and(|l| routed.contains(&l));
    let a = all.iter().find(|n| n.name == "node-1").unwrap().clone();
    let b = all
        .iter()
        .find(|n| n.subnet != a.subnet && is_routed(n))
        .expect("a routed node in the other subnet")
        .clone();
    let c = all
        .iter()
        .find(|n| n.subnet != a.subnet && !is_routed(n))
        .expect("a fallback node in the other subnet")
        .clone();
    let pod_ip = |n: &NodeSpec| {
        lab.state
            .nodes
            .iter()
            .find(|s| s.index == n.index)
            .and_then(|s| s.pod_ip.clone())
            .unwrap()
    };
    let servers = [
        iperf_server(&b.ns),
        iperf_server(&b.pod_ns),
        iperf_server(&c.pod_ns),
    ];
    let setups = [
        (
            "baseline: node → node across the router",
            a.ns.clone(),
            b.ip.to_string(),
        ),
        (
            "routed pair: pod → pod via VPC route",
            a.pod_ns.clone(),
            pod_ip(&b),
        ),
        (
            "fallback pair: pod → pod over vxlan",
            a.pod_ns.clone(),
            pod_ip(&c),
        ),
    ];
    let mut results = vec![Vec::new(); setups.len()];
    for run in 1..=runs {
        for (i, (name, from, to)) in setups.iter().enumerate() {
            let g = iperf3_gbps(from, to, secs).expect("iperf3 run");
            eprintln!("  run {run}: {name}: {g:.2} Gbit/s");
            results[i].push(g);
        }
    }
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    let _ = lab::down(PREFIX);

    println!("\nFallback vxlan, {nodes} nodes started together, quota {quota} routes per table:");
    println!(
        "  node-1's pod and every other pod reach each other {converged:.1} s after the first flanneld started"
    );
    println!(
        "  leases with VPC routes: {} (rtb-b), over vxlan: {}",
        routed.len(),
        usize::from(nodes) - routed.len()
    );
    println!("  API calls until then: {calls} ({by_action:?})");
    let base = median(results[0].clone());
    for ((name, _, _), r) in setups.iter().zip(&results) {
        let m = median(r.clone());
        println!(
            "  {name}: median {m:.2} Gbit/s, {:.1} % of the baseline",
            100.0 * m / base
        );
    }
}
