//! Figures from the lab (root; tencent-vpc, per-node mode, emulator API latency 0):
//! - join: from a new node's flanneld start to ready (/readyz: its route listed everywhere and
//!   its data path probe answered), and to its pod (created once ready) reachable from every
//!   pod and every pod reachable from it (medians of JOINS), and the API calls each join cost
//!   (all agents);
//! - steady state: API calls per node per resync interval while nothing changes;
//! - flanneld RSS and CPU at idle, during the joins (an existing node's agent), and with 1,000
//!   synthetic peer leases written to etcd.
//!
//! `cargo bench -p flannel-lab --bench lab_figures`; the shipped daemon's memory:
//! `scripts/build-dist.sh && FLANNELD=$PWD/target/shipped/flanneld cargo bench ...` (JOINS,
//! IDLE_SECS, PEERS; HOLD_SECS keeps the lab up that long at the end, to look at the process).

use flannel_lab::lab::{self, Reach};
use flannel_lab::measure::{env_or, fresh_lab, median, total_calls};
use flannel_lab::netns::wait_until;
use flannel_lab::topology::{Backend, LabSpec, Mode};
use std::path::Path;
use std::time::{Duration, Instant};

const PREFIX: &str = "lbench";

/// A `/proc/<pid>/status` figure in MB (`VmRSS`: all resident pages; `RssAnon`: heap and
/// stacks, without the binary's own file-backed pages).
fn status_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmRSS")
}

fn anon_mb(pid: u32) -> f64 {
    status_mb(pid, "RssAnon")
}

/// Resident MB of a process by what backs it (`/proc/<pid>/smaps`): the executable's own
/// file, shared libraries, and everything else (heap, stacks, anonymous maps).
fn breakdown_mb(pid: u32) -> (f64, f64, f64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let exe = exe.to_string_lossy().replace(" (deleted)", "");
    let (mut own, mut libs, mut other) = (0u64, 0u64, 0u64);
    let mut current = String::new();
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            current = line.split_whitespace().nth(5).unwrap_or("").to_string();
        } else if let Some(kb) = line.strip_prefix("Rss:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            if !current.is_empty() && current == exe {
                own += kb;
            } else if current.contains(".so") {
                libs += kb;
            } else {
                other += kb;
            }
        }
    }
    let mb = |kb: u64| kb as f64 / 1024.0;
    (mb(own), mb(libs), mb(other))
}

/// User + system CPU time of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // After the comm: state is field 0, utime 11, stime 12 (clock ticks, 100 per second).
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let joins = env_or("JOINS", 10) as usize;
    let idle_secs = env_or("IDLE_SECS", 30);
    let synthetic = env_or("PEERS", 1000);
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_flannel-lab"))
        .parent()
        .unwrap()
        .to_path_buf();
    let spec = LabSpec {
        prefix: PREFIX.into(),
        backend: Backend::TencentVpc,
        mode: Mode::PerNode,
        route_quota: flannel_lab::topology::DEFAULT_QUOTA,
        fallback: false,
        kube: false,
    };
    let mut lab = fresh_lab(spec, 3, bin_dir, Reach::Full);
    println!(
        "lab up with 3 nodes: converged {:.2} s after the first flanneld started",
        lab.state.converged_secs.unwrap_or_default()
    );
    let watcher = lab.state.nodes[0].flanneld_pid.unwrap();

    // Joins.
    let mut times = Vec::new();
    let mut ready_times = Vec::new();
    let mut probe_ms = Vec::new();
    let mut calls = Vec::new();
    let cpu0 = cpu_secs(watcher);
    let t0 = Instant::now();
    for _ in 0..joins {
        let before = total_calls(&lab.calls().unwrap());
        let (n, started) = lab.start_node().unwrap();
        // /readyz polled (each poll a process in the node's namespace: ~10 ms resolution).
        let ready = wait_until(Duration::from_secs(60), || {
            lab.agent_ready(&n)
                .then(|| started.elapsed().as_secs_f64())
                .ok_or_else(|| format!("{} not ready", n.name))
        })
        .unwrap();
        // The probe's own time, as the daemon logged it (`data path verified after_ms=N`).
        if let Some(ms) = lab.agent_log(&n).lines().find_map(|l| {
            let rest = l.split("data path verified").nth(1)?;
            rest.split("after_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        }) {
            probe_ms.push(ms);
        }
        lab.finish_join(std::slice::from_ref(&n), started).unwrap();
        let secs = lab.state.converged_secs.unwrap();
        let spent = total_calls(&lab.calls().unwrap()) - before;
        println!(
            "  join {}: ready {ready:.2} s, pod (created once ready) reachable {secs:.2} s after flanneld start, {spent} API calls",
            n.name
        );
        ready_times.push(ready);
        times.push(secs);
        calls.push(spent as f64);
    }
    let churn_cpu = (cpu_secs(watcher) - cpu0) / t0.elapsed().as_secs_f64();
    let churn_rss = rss_mb(watcher);
    let churn_anon = anon_mb(watcher);

    // Steady state.
    let nodes = lab.state.nodes.len() as f64;
    let before = lab.calls().unwrap();
    let cpu1 = cpu_secs(watcher);
    std::thread::sleep(Duration::from_secs(idle_secs)); // a measurement window, not a sync
    let after = lab.calls().unwrap();
    let idle_cpu = (cpu_secs(watcher) - cpu1) / idle_secs as f64;
    let idle_rss: Vec<f64> = lab
        .state
        .nodes
        .iter()
        .filter_map(|n| n.flanneld_pid)
        .map(rss_mb)
        .collect();
    let idle_anon = anon_mb(watcher);
    let mut steady = Vec::new();
    for (action, results) in &after {
        let n: u64 = results.values().sum::<u64>()
            - before.get(action).map_or(0, |r| r.values().sum::<u64>());
        if n > 0 {
            steady.push(format!(
                "{action} {:.2}",
                n as f64 / nodes / (idle_secs as f64 / 10.0)
            ));
        }
    }

    // 1,000 synthetic peers (leases of nodes that do not exist), written in one etcdctl txn
    // per 100 keys. Admission takes only leases inside the Network that overlap nothing, and
    // 10.244.0.0/16 holds 256 /24s: so /29s (room for 7,000 and more), in the /24s no lab
    // node holds.
    let held: Vec<String> = lab.nodes().iter().filter_map(|n| lab.lease_of(n)).collect();
    let free_24s = (1..=255u8).filter(|x| {
        !held
            .iter()
            .any(|h| h.starts_with(&format!("10.244.{x}.0/")))
    });
    let subnets: Vec<String> = free_24s
        .flat_map(|x| (0..32u8).map(move |k| format!("10.244.{x}.{}-29", k * 8)))
        .take(synthetic as usize)
        .collect();
    assert_eq!(
        subnets.len(),
        synthetic as usize,
        "room for {synthetic} /29 peers"
    );
    let keys: Vec<String> = subnets
        .iter()
        .enumerate()
        .map(|(i, subnet)| {
            format!(
                r#"put /coreos.com/network/subnets/{subnet} "{{\"PublicIP\":\"172.16.3.{}\",\"PublicIPv6\":null,\"BackendType\":\"tencent-vpc\"}}""#,
                1 + i % 250
            )
        })
        .collect();
    for chunk in keys.chunks(100) {
        // etcdctl txn reads: compares, blank line, success requests, blank, failure, blank.
        let txn = format!("\n{}\n\n\n", chunk.join("\n"));
        let endpoints = lab.spec().etcd_endpoint();
        lab.router()
            .ok_with(
                &[
                    "env",
                    "ETCDCTL_API=3",
                    "etcdctl",
                    "--endpoints",
                    &endpoints,
                    "txn",
                ],
                Some(txn.as_bytes()),
            )
            .unwrap();
    }
    let n1 = lab.find("node-1").unwrap();
    wait_until(Duration::from_secs(60), || {
        let m = flannel_lab::netns::Netns::named(&n1.ns)
            .ok(&["curl", "-fsS", "http://127.0.0.1:8081/metrics"])
            .map_err(|e| e.to_string())?;
        let peers = m
            .lines()
            .find_map(|l| l.strip_prefix("flannel_peers "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        (peers >= synthetic as f64)
            .then_some(())
            .ok_or_else(|| format!("{peers} peers"))
    })
    .unwrap();
    let many_rss = rss_mb(watcher);
    let many_anon = anon_mb(watcher);
    let (own, libs, other) = breakdown_mb(watcher);
    // `HOLD_SECS=N` keeps the lab up that long for a look at the process (smaps, pagemap).
    let hold = env_or("HOLD_SECS", 0);
    if hold > 0 {
        println!("holding the lab {hold} s: node-1's flanneld is pid {watcher}");
        std::thread::sleep(Duration::from_secs(hold)); // an inspection window, not a sync
    }

    let _ = lab::down(PREFIX);
    println!("\nlab figures (tencent-vpc per-node, emulator latency 0, {joins} joins):");
    println!(
        "  join → ready (/readyz, the data path probe answered): median {:.2} s (min {:.2}, max {:.2})",
        median(ready_times.clone()),
        ready_times.iter().copied().fold(f64::INFINITY, f64::min),
        ready_times.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "  of which the data path probe (route listed → answered, from the daemon's log): median {:.0} ms over {} joins (max {:.0} ms)",
        median(probe_ms.clone()),
        probe_ms.len(),
        probe_ms.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "  join → reachable from every pod (pod created once ready): median {:.2} s (min {:.2}, max {:.2})",
        median(times.clone()),
        times.iter().copied().fold(f64::INFINITY, f64::min),
        times.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "  API calls per join (all agents): median {:.0}",
        median(calls)
    );
    println!(
        "  steady state, calls per node per 10 s resync over {idle_secs} s: {}",
        if steady.is_empty() {
            "none".to_string()
        } else {
            steady.join(", ")
        }
    );
    println!(
        "  flanneld RSS idle: {:.1}–{:.1} MB (node-1 anonymous {idle_anon:.1} MB); CPU idle {:.2} %, during joins {:.2} % (RSS {churn_rss:.1} MB, anonymous {churn_anon:.1} MB)",
        idle_rss.iter().copied().fold(f64::INFINITY, f64::min),
        idle_rss.iter().copied().fold(0.0, f64::max),
        100.0 * idle_cpu,
        100.0 * churn_cpu
    );
    println!(
        "  flanneld RSS with {synthetic} peer leases: {many_rss:.1} MB (anonymous {many_anon:.1} MB); by backing: the executable {own:.1} MB, shared libraries {libs:.1} MB, heap, stacks and other maps {other:.1} MB"
    );
}
