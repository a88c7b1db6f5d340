//! Pod-to-pod throughput across two nodes (iperf3, TCP, one stream) with host-gw, vxlan,
//! udp and wireguard (userspace), against a baseline of the same namespace topology (same underlay, same bridge/
//! host-local pods, no flanneld routes) with static routes. Runs are interleaved (baseline,
//! host-gw, vxlan, udp, wireguard, repeated) so drift on a shared machine hits all three alike; the median
//! of each is reported with its ratio to the baseline. Root only.
//!
//! `cargo bench -p flanneld --bench dataplane_iperf` (BENCH_RUNS=5, BENCH_SECS=5 by default;
//! FLANNELD=/abs/path runs another build of the daemon, e.g. the shipped one)

#[path = "../tests/common/cluster.rs"]
mod cluster;

use cluster::{Cluster, Pod};
use flanneld_testing::netns::{wait_for, Underlay};
use std::process::{Child, Stdio};
use std::time::Duration;

struct Setup {
    name: &'static str,
    /// Kept alive (namespaces, daemons, etcd) for the runs.
    _cluster: Cluster,
    pods: Vec<Pod>,
    server: Child,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn setup(name: &'static str, tag: &str, config: &str) -> Setup {
    let cluster = Cluster::start(tag, config, 2, &["--ip-masq"]);
    if name == "baseline" {
        // alloc programs nothing: route each node's pod subnet by hand, as an operator would.
        for (from, to) in [(1u8, 2u8), (2, 1)] {
            let subnet = cluster.node(to).subnet();
            cluster.node(from).ns.ok(&[
                "ip",
                "route",
                "add",
                &subnet,
                "via",
                &Underlay::node_ip(to),
                "dev",
                "eth0",
            ]);
        }
    }
    let pods = vec![
        cluster.add_pod(1, 1, "1.0.0"),
        cluster.add_pod(2, 1, "1.0.0"),
    ];
    cluster.all_pods_reach_each_other(&pods);
    let server = pods[1]
        .ns
        .command("iperf3")
        .args(["-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server (scripts/setup.sh installs iperf3)");
    Setup {
        name,
        _cluster: cluster,
        pods,
        server,
    }
}

/// One client run; Gbit/s received.
fn measure(s: &Setup, secs: u32) -> f64 {
    let target = s.pods[1].ip.clone();
    let t = secs.to_string();
    wait_for(
        &format!("iperf3 {} run", s.name),
        Duration::from_secs(u64::from(secs) + 30),
        || {
            let out = s.pods[0]
                .ns
                .run(&["iperf3", "-c", &target, "-t", &t, "-J"], None);
            let json: serde_json::Value =
                serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            json["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .map(|bps| bps / 1e9)
                .ok_or_else(|| format!("{}", json["error"]))
        },
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would too: only run when asked.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Some(daemon) = std::env::var_os("FLANNELD") {
        let _ = cluster::DAEMON.set(daemon.into());
    }
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let secs: u32 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let setups = [
        setup(
            "baseline",
            "bbase",
            r#"{"Network":"10.250.0.0/16","Backend":{"Type":"alloc"}}"#,
        ),
        setup(
            "host-gw",
            "bhgw",
            r#"{"Network":"10.251.0.0/16","Backend":{"Type":"host-gw"}}"#,
        ),
        setup(
            "vxlan",
            "bvxl",
            r#"{"Network":"10.252.0.0/16","Backend":{"Type":"vxlan"}}"#,
        ),
        setup(
            "udp",
            "budp",
            r#"{"Network":"10.253.0.0/16","Backend":{"Type":"udp"}}"#,
        ),
        // Userspace WireGuard here (this kernel has no wireguard module).
        setup(
            "wireguard",
            "bwg",
            r#"{"Network":"10.254.0.0/16","Backend":{"Type":"wireguard"}}"#,
        ),
    ];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    for run in 1..=runs {
        for (i, s) in setups.iter().enumerate() {
            let g = measure(s, secs);
            println!("run {run}: {:<9} {g:6.2} Gbit/s", s.name);
            results[i].push(g);
        }
    }
    // Each run's ratio to the baseline measured next to it: drift between runs cancels.
    let mut paired: Vec<Vec<f64>> = results
        .iter()
        .map(|r| r.iter().zip(&results[0]).map(|(x, b)| x / b).collect())
        .collect();
    let medians: Vec<f64> = results.iter_mut().map(|r| median(r)).collect();
    println!("\npod-to-pod TCP, 1 stream, {secs} s x {runs} interleaved runs:");
    println!("  setup    median Gbit/s  median/baseline  median of paired ratios");
    for ((s, m), p) in setups.iter().zip(&medians).zip(paired.iter_mut()) {
        println!(
            "  {:<9} {m:13.2}  {:14.1} %  {:22.1} %",
            s.name,
            100.0 * m / medians[0],
            100.0 * median(p)
        );
    }
}
