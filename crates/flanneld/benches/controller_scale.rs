//! Benchmark (not a test): the route controller at scale. A real `flanneld --controller`
//! process (the shipped code) over a real etcd, against the emulator at its documented rate
//! limit (100 requests per second per action) with the route quota raised: NODES leases
//! (5,000 by default) first, until every route is in both tables; then churn — JOINS_PER_SEC
//! new leases and as many deleted every second for CHURN_SECS (100/s each for 60 s). Route
//! presence is measured from outside, through the emulator's admin API (`/state`, polled
//! every 200 ms: that is the resolution), as the user's console would show it.
//!
//! Reported: time to first convergence and its API calls; during churn, lease → route present
//! in every table (p50/p99/max) and lease deleted → route gone (the garbage collector's pace),
//! API calls per join-or-leave, the controller's peak RSS and CPU seconds.
//!
//! Run: `cargo bench -p flanneld --bench controller_scale` (NODES, JOINS_PER_SEC, CHURN_SECS;
//! FLANNELD=/abs/path to run another build of the daemon).

#[path = "common/vpc_nodes.rs"]
mod vpc_nodes;

use flanneld_testing::EtcdServer;
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tencent_vpc_emulator::scenario::Scenario;
use tencent_vpc_emulator::{Emulator, EmulatorConfig};
use vpc_nodes::Layout;

const ID: &str = "AKIDlab0000000000000000000000000000";
const KEY: &str = "lab-secret-key-0000000000000000";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where this bench's nodes live.
const LAYOUT: Layout = Layout {
    subnet_a: "172.16.64.0/18",
    subnet_b: "172.16.128.0/18",
    a_from: 64,
    b_from: 128,
};

fn node(i: usize) -> (Ipv4Addr, &'static str, Ipv4Net) {
    vpc_nodes::node(&LAYOUT, i)
}

fn scenario(total: usize) -> Scenario {
    vpc_nodes::scenario(&LAYOUT, total)
}

fn lease_key(i: usize) -> String {
    let pod = node(i).2;
    format!(
        "/coreos.com/network/subnets/{}-{}",
        pod.network(),
        pod.prefix_len()
    )
}

fn lease_value(i: usize) -> String {
    let (ip, subnet, _) = node(i);
    json!({"PublicIP": ip.to_string(), "PublicIPv6": null, "BackendType": "tencent-vpc",
           "BackendData": {"PrivateIP": ip.to_string(), "SubnetId": subnet}})
    .to_string()
}

/// Destinations present in every route table (ours: tagged "flannel").
async fn present_everywhere(admin: &str) -> BTreeSet<Ipv4Net> {
    let text = reqwest::get(format!("http://{admin}/state"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let s = Scenario::from_json(&text).unwrap();
    let mut counts: BTreeMap<Ipv4Net, usize> = BTreeMap::new();
    for t in &s.route_tables {
        for r in &t.routes {
            if r.route_description.starts_with("flannel") {
                *counts.entry(r.destination_cidr_block).or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .filter(|(_, n)| *n == s.route_tables.len())
        .map(|(d, _)| d)
        .collect()
}

async fn calls(admin: &str) -> u64 {
    let v: Value = reqwest::get(format!("http://{admin}/calls"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.as_object()
        .unwrap()
        .values()
        .flat_map(|o| o.as_object().unwrap().values())
        .map(|n| n.as_u64().unwrap())
        .sum()
}

/// (RSS bytes, CPU seconds) of a process.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    (rss, ticks as f64 / 100.0)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = env_or("NODES", 5000) as usize;
    let rate = env_or("JOINS_PER_SEC", 100) as usize;
    let churn_secs = env_or("CHURN_SECS", 60) as usize;
    let joins = rate * churn_secs;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let etcd = EtcdServer::start();
    let emu = rt
        .block_on(Emulator::start(EmulatorConfig {
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..EmulatorConfig::on_loopback(scenario(n + joins))
        }))
        .unwrap();
    let admin = emu.admin.unwrap().to_string();
    let config = json!({"Network": "10.0.0.0/8", "Backend": {"Type": "tencent-vpc", "Mode": "controller",
        "ClusterName": "bench", "VpcId": "vpc-lab", "Region": "ap-guangzhou",
        "Endpoint": format!("http://{}", emu.api), "ResyncInterval": 60}});
    let client = rt
        .block_on(etcd_client::Client::connect([etcd.endpoint()], None))
        .unwrap();
    let mut kv = client.kv_client();
    rt.block_on(kv.put("/coreos.com/network/config", config.to_string(), None))
        .unwrap();
    let started = Instant::now();
    for i in 0..n {
        rt.block_on(kv.put(lease_key(i), lease_value(i), None))
            .unwrap();
    }
    let log = std::fs::File::create(std::env::temp_dir().join("controller_scale.log")).unwrap();
    let controller = Controller(
        // FLANNELD: another build of the daemon (e.g. the shipped one, target/shipped/flanneld).
        Command::new(std::env::var_os("FLANNELD").unwrap_or(env!("CARGO_BIN_EXE_flanneld").into()))
            .args([
                "--controller",
                &format!("--etcd-endpoints={}", etcd.endpoint()),
                "--healthz-port=0",
            ])
            .env("TENCENTCLOUD_SECRET_ID", ID)
            .env("TENCENTCLOUD_SECRET_KEY", KEY)
            .env("HOSTNAME", "bench")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let pid = controller.0.id();
    let mut peak = 0;
    let all: BTreeSet<Ipv4Net> = (0..n).map(|i| node(i).2).collect();
    loop {
        peak = peak.max(usage(pid).0);
        let present = rt.block_on(present_everywhere(&admin));
        if all.is_subset(&present) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "no convergence: {} of {n}",
            present.len()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let converged = started.elapsed();
    let calls_converged = rt.block_on(calls(&admin));
    let (_, cpu_converged) = usage(pid);
    println!("first convergence: {n} nodes in {:.1} s, {calls_converged} API calls ({:.3} per node), controller CPU {cpu_converged:.1} s, peak RSS {:.1} MB",
        converged.as_secs_f64(), calls_converged as f64 / n as f64, peak as f64 / 1e6);

    // Churn: every 1/rate s one join (a new lease) and one leave (the oldest lease deleted),
    // each write its own task so etcd round trips never hold the schedule back; a poller
    // beside it reads the tables every 200 ms.
    let written = std::sync::Arc::new(std::sync::Mutex::new((
        BTreeMap::<Ipv4Net, Instant>::new(),
        BTreeMap::<Ipv4Net, Instant>::new(),
    )));
    let churn_started = Instant::now();
    let writer = {
        let (kv, written) = (kv.clone(), written.clone());
        rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            let mut writes = Vec::with_capacity(2 * joins);
            for k in 0..joins {
                tick.tick().await;
                let (mut kv1, mut kv2, w) = (kv.clone(), kv.clone(), written.clone());
                writes.push(tokio::spawn(async move {
                    kv1.put(lease_key(n + k), lease_value(n + k), None)
                        .await
                        .unwrap();
                    w.lock().unwrap().0.insert(node(n + k).2, Instant::now());
                }));
                let w = written.clone();
                writes.push(tokio::spawn(async move {
                    kv2.delete(lease_key(k), None).await.unwrap();
                    w.lock().unwrap().1.insert(node(k).2, Instant::now());
                }));
            }
            for w in writes {
                w.await.unwrap();
            }
        })
    };
    let mut join_latency = Vec::new();
    let mut leave_latency = Vec::new();
    let mut churn = None;
    let mut drain_deadline = None;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        peak = peak.max(usage(pid).0);
        let present = rt.block_on(present_everywhere(&admin));
        let (joined, left) = &mut *written.lock().unwrap();
        settle(
            &present,
            joined,
            left,
            &mut join_latency,
            &mut leave_latency,
        );
        if churn.is_none() && writer.is_finished() {
            churn = Some(churn_started.elapsed());
            drain_deadline = Some(Instant::now() + Duration::from_secs(120));
        }
        if churn.is_some()
            && (joined.is_empty() || drain_deadline.is_some_and(|d| Instant::now() > d))
        {
            break;
        }
    }
    let churn = churn.unwrap();
    let never = written.lock().unwrap().0.len();
    let churn_calls = rt.block_on(calls(&admin)) - calls_converged;
    let (_, cpu_end) = usage(pid);
    let changes = 2 * joins;
    println!(
        "churn: {rate} joins/s and {rate} leaves/s for {:.1} s: lease -> route in every table p50 {:.2} s, p99 {:.2} s, max {:.2} s ({} of {joins} seen, {} never)",
        churn.as_secs_f64(),
        percentile(&mut join_latency.clone(), 0.5),
        percentile(&mut join_latency.clone(), 0.99),
        percentile(&mut join_latency, 1.0),
        joins - never,
        never
    );
    println!(
        "        lease deleted -> route gone: {} of {joins} within the run (p50 {:.1} s; the garbage collector's guarded pace)",
        leave_latency.len(),
        percentile(&mut leave_latency, 0.5)
    );
    println!(
        "        {churn_calls} API calls for {changes} joins and leaves: {:.4} per change; controller CPU {:.1} s over the churn ({:.1} % of a core), peak RSS {:.1} MB",
        churn_calls as f64 / changes as f64,
        cpu_end - cpu_converged,
        100.0 * (cpu_end - cpu_converged) / churn.as_secs_f64(),
        peak as f64 / 1e6
    );
    drop(controller);
}

fn settle(
    present: &BTreeSet<Ipv4Net>,
    joined: &mut BTreeMap<Ipv4Net, Instant>,
    left: &mut BTreeMap<Ipv4Net, Instant>,
    join_latency: &mut Vec<f64>,
    leave_latency: &mut Vec<f64>,
) {
    joined.retain(|d, at| {
        let done = present.contains(d);
        if done {
            join_latency.push(at.elapsed().as_secs_f64());
        }
        !done
    });
    left.retain(|d, at| {
        let gone = !present.contains(d);
        if gone {
            leave_latency.push(at.elapsed().as_secs_f64());
        }
        !gone
    });
}
